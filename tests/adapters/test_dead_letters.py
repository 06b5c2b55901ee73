"""The dead-letter store on moto: durable, exact payloads, bounded in size and count, paged."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from botocore.exceptions import ClientError
from prometheus_client import CollectorRegistry

import feedpipe.services
from feedpipe.adapters.dead_letters import DeadLetterLimits, DeadLetters
from feedpipe.config import load_settings
from feedpipe.core.letters import decode_payload, encode_payload
from feedpipe.metrics import Metrics
from feedpipe.services import build_dead_letters, build_stores
from tests.adapters.conftest import APP_TABLE

EVENTS = Path(__file__).parent.parent / "events"
TABLE = "feedpipe-dead-letters"


def event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return loaded


def kinesis_record(change: dict[str, Any], seq: str = "4959033827149025660855969253836157") -> dict[str, Any]:
    """A record as ``feedpipe consume`` reads it from Kinesis: the change as bytes."""
    return {
        "kinesis": {"data": json.dumps(change).encode(), "sequenceNumber": seq, "partitionKey": "POST#p1",
                    "approximateArrivalTimestamp": 1705314600.5},
        "eventSource": "aws:kinesis",
    }


def store(dynamodb: Any, **limits: int) -> DeadLetters:
    return DeadLetters(dynamodb, TABLE, "feedpipe:dlq", DeadLetterLimits(**limits))


@pytest.fixture
def letters(dynamodb: Any, tables: dict[str, str]) -> DeadLetters:
    return store(dynamodb)


def test_create_tables_makes_the_dead_letter_table(tables: dict[str, str]) -> None:
    assert tables[TABLE] == "created"


def test_a_letter_keeps_source_reason_and_payload(letters: DeadLetters) -> None:
    record = event("bad_event_name")
    letter_id = letters.add("stream:shardId-1", "unknown eventName 'UPSERT'", record)

    (entry,) = letters.entries()
    assert entry["id"] == letter_id and entry["at"].endswith("Z")
    assert (entry["source"], entry["reason"]) == ("stream:shardId-1", "unknown eventName 'UPSERT'")
    assert entry["payload"] == record and not entry.get("truncated")
    assert letters.count() == 1


def test_letters_live_in_dynamodb_and_survive_the_cache_redis_flushed(
    monkeypatch: pytest.MonkeyPatch, dynamodb: Any, tables: dict[str, str]
) -> None:
    """Regression: they were a list in the app's cache Redis; a restart (empty) lost them all,
    and large ones filled a maxmemory Redis."""
    redis = fakeredis.FakeRedis()
    monkeypatch.setattr(feedpipe.services, "connect_redis", lambda url: redis)
    stores = build_stores(load_settings({"FEEDPIPE_TABLE_NAME": APP_TABLE}), dynamodb)
    big = {**event("bad_event_name"), "padding": "x" * 100_000}
    stores.dead_letters.add_many([("stream:shardId-1", "unknown eventName 'UPSERT'", big)] * 3)

    assert redis.dbsize() == 0, "nothing written to the cache Redis"
    redis.flushall()  # what a restart of a cache without persistence leaves
    assert stores.dead_letters.count() == 3
    assert [e["reason"] for e in stores.dead_letters.entries()] == ["unknown eventName 'UPSERT'"] * 3


def test_bytes_anywhere_come_back_as_bytes(letters: DeadLetters) -> None:
    """Regression: nested bytes (a Kinesis record's data, ``B``/``BS`` attributes) came back
    as ``{"__bytes_b64__": ...}`` objects, so a replayed record could never be parsed."""
    change = event("post_insert")
    change["dynamodb"]["NewImage"]["thumb"] = {"B": b"\x89PNG\x00\xff"}
    change["dynamodb"]["NewImage"]["blobs"] = {"BS": [b"\x00", b"\x01\x02"]}
    # As boto3 gives them: B and BS values as bytes in a Streams record, data as bytes in Kinesis.
    payload = {"streams": change, "kinesis": kinesis_record(event("post_insert")),
               "at": datetime(2026, 11, 29, 14, 0, tzinfo=UTC), "raw": b"\xff"}
    letters.add("stream:shardId-1", "unexpected ConnectionError: reset", payload)

    (entry,) = letters.entries()
    json.dumps(entry)  # what ``dlq list --json`` prints
    assert decode_payload(entry["payload"]) == payload


def test_decimals_and_sets_are_stored_as_json(letters: DeadLetters) -> None:
    letters.add("regen", "job is not JSON", {"n": Decimal("1.50"), "tags": {"b", "a"}})
    assert letters.entries()[0]["payload"] == {"n": "1.50", "tags": ["a", "b"]}


def test_a_payload_that_only_looks_tagged_is_left_alone() -> None:
    payload = {"__bytes_b64__": "not base64!"}
    assert decode_payload(json.loads(encode_payload(payload))) == payload


def test_a_large_record_keeps_its_keys_sequence_and_digest(dynamodb: Any, tables: dict[str, str]) -> None:
    """Regression: a letter was stored whole, whatever its size (DynamoDB refuses items over 400 KB)."""
    letters = store(dynamodb, max_bytes=4096)
    change = event("post_insert")
    change["dynamodb"]["NewImage"]["content"] = {"S": "é" * 300_000}
    record = kinesis_record(change, seq="4959")
    stream_record = {**event("post_insert"), "padding": "x" * 10_000}

    letters.add_many([("stream:shard-k", "too big to parse", record), ("stream:shard-d", "bad", stream_record)])

    by_source = {e["source"]: e for e in letters.entries()}
    cut = by_source["stream:shard-k"]
    encoded = encode_payload(record).encode()
    assert cut["truncated"] is True and cut["reason"] == "too big to parse"
    assert (cut["original_bytes"], cut["sha256"]) == (len(encoded), hashlib.sha256(encoded).hexdigest())
    assert cut["payload"]["kinesis"] == {"partitionKey": "POST#p1", "sequenceNumber": "4959"}
    assert cut["payload"]["change"]["eventName"] == "INSERT"
    assert cut["payload"]["change"]["dynamodb"]["Keys"] == change["dynamodb"]["Keys"]
    assert len(json.dumps(cut["payload"])) < 4096
    other = by_source["stream:shard-d"]
    assert other["truncated"] is True
    assert other["payload"]["dynamodb"]["Keys"] == stream_record["dynamodb"]["Keys"]
    assert other["payload"]["dynamodb"]["SequenceNumber"] == stream_record["dynamodb"]["SequenceNumber"]


def test_a_full_store_drops_new_letters_counted_and_logged(
    dynamodb: Any, tables: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    settings = load_settings({"FEEDPIPE_DEAD_LETTER_MAX_COUNT": "3"})
    letters = build_dead_letters(settings, dynamodb, Metrics.create(registry))
    batch = [("stream:s1", f"bad {n}", {"dynamodb": {"Keys": {"PK": {"S": f"POST#{n}"}}}}) for n in range(5)]

    with caplog.at_level(logging.ERROR):
        letters.add_many(batch)
        assert letters.add("task:feedpipe.apply_follows", "bad event", {"type": "x"}) is None

    assert letters.count() == 3
    assert sorted(e["reason"] for e in letters.entries()) == ["bad 0", "bad 1", "bad 2"]
    def dropped(source: str) -> float | None:
        return registry.get_sample_value("feedpipe_dead_letters_dropped_total", {"source": source})

    assert (dropped("stream"), dropped("task"), dropped("regen")) == (2, 1, 0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and "stream:s1" in errors[0] and "bad 3" in errors[0] and "POST#3" in errors[0]

    oldest = next(letters.pages())[0]
    assert letters.remove(oldest) and not letters.remove(oldest)  # a second removal gives nothing back
    assert letters.count() == 2
    assert letters.add("regen", "room again", "job") is not None
    assert letters.count() == 3


def test_pages_read_everything_oldest_first_in_bounded_pages(letters: DeadLetters) -> None:
    letters.add_many([("regen", f"bad {n:03d}", f"job {n}") for n in range(230)])

    pages = list(letters.pages(page_size=100))
    assert [len(p) for p in pages] == [100, 100, 30]
    reasons = [e["reason"] for page in pages for e in page]
    assert sorted(reasons) == [f"bad {n:03d}" for n in range(230)]
    assert [e["at"] for page in pages for e in page] == sorted(e["at"] for page in pages for e in page)
    newest = [e["at"] for e in letters.entries(limit=150)]
    assert len(newest) == 150 and newest == sorted(newest, reverse=True)


def test_purge_deletes_everything_and_resets_the_count(dynamodb: Any, tables: dict[str, str]) -> None:
    letters = store(dynamodb, max_count=250)
    letters.add_many([("regen", "bad", f"job {n}") for n in range(250)])
    other = DeadLetters(dynamodb, TABLE, "staging:dlq")
    other.add("regen", "another deployment's", "job")

    assert letters.purge() == 250
    assert letters.count() == 0 and letters.entries() == []
    assert other.count() == 1, "a store sharing the table is left alone"
    letters.add_many([("regen", "after purge", f"job {n}") for n in range(250)])
    assert letters.count() == 250


def test_purge_gives_back_room_a_killed_writer_reserved(letters: DeadLetters) -> None:
    letters.add("regen", "bad", "job")
    letters._add_count(2)  # what a writer killed between reserving and writing leaves

    assert letters.count() == 3
    assert letters.purge() == 1
    assert letters.count() == 0


class FailingAfterUnprocessed:
    """A DynamoDB client whose first BatchWriteItem stores all but the last five items (returned
    as UnprocessedItems) and whose second fails outright, as a throttled table may answer."""

    def __init__(self, client: Any) -> None:
        self.client, self.calls = client, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.calls += 1
        if self.calls == 1:
            ((table, requests),) = RequestItems.items()
            self.client.batch_write_item(RequestItems={table: requests[:-5]})
            return {"UnprocessedItems": {table: requests[-5:]}}
        if self.calls == 2:
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                              "BatchWriteItem")
        return self.client.batch_write_item(RequestItems=RequestItems)  # type: ignore[no-any-return]


def test_a_batch_failing_after_a_partial_write_is_retried_without_duplicates_or_a_drifted_count(
    dynamodb: Any, tables: dict[str, str]
) -> None:
    letters = DeadLetters(FailingAfterUnprocessed(dynamodb), TABLE, "feedpipe:dlq")
    batch = [("stream:shardId-1", "unknown eventName", {"n": n}) for n in range(30)]
    with pytest.raises(ClientError):
        letters.add_many(batch)

    letters.add_many(batch)  # the caller's retry

    stored = sorted(entry["payload"]["n"] for page in letters.pages() for entry in page)
    assert stored == list(range(30)), "each letter once"
    assert letters.count() == 30
