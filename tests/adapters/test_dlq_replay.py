"""``feedpipe dlq replay`` on the DynamoDB store: pages past what cannot be sent, resends Kinesis
records and binary attributes exactly, keeps what fails again or was cut."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from feedpipe.adapters.dead_letters import DeadLetterLimits, DeadLetters
from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.ops import replay_dead_letters
from tests.fakes import FakeDispatcher

EVENTS = Path(__file__).parent.parent / "events"
SOURCE = "stream:shardId-00000001"


def event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return loaded


def kinesis_record(change: dict[str, Any]) -> dict[str, Any]:
    """As ``feedpipe consume`` reads it from Kinesis (``as_event_record``): data as bytes."""
    return {"kinesis": {"data": json.dumps(change).encode(), "sequenceNumber": "4959", "partitionKey": "POST#p"},
            "eventSource": "aws:kinesis"}


@pytest.fixture
def letters(dynamodb: Any, tables: dict[str, str]) -> DeadLetters:
    return DeadLetters(dynamodb, "feedpipe-dead-letters", "feedpipe:dlq", DeadLetterLimits(max_bytes=8192))


@pytest.fixture
def dispatcher() -> FakeDispatcher:
    return FakeDispatcher()


def replay(letters: DeadLetters, dispatcher: FakeDispatcher, limit: int = 0) -> Any:
    pipeline = RecordPipeline(dispatcher, letters, {"private"})
    return replay_dead_letters(SimpleNamespace(dead_letters=letters), pipeline, limit)  # type: ignore[arg-type]


def test_a_kinesis_record_dead_lettered_for_a_transient_reason_is_dispatched_on_replay(letters, dispatcher):
    """Regression: the record's bytes came back as a ``{"__bytes_b64__": ...}`` object, so replay
    dead-lettered a good record again as "Kinesis data is not base64 JSON"."""
    letters.add(SOURCE, "unexpected ConnectionError: connection reset", kinesis_record(event("post_insert")))

    result = replay(letters, dispatcher)

    assert (result.replayed, result.failed_again) == (1, 0)
    assert [e.kind for e in dispatcher.events] == ["post_published"]
    assert letters.count() == 0 and letters.entries() == []


def test_a_record_with_binary_attributes_is_dispatched_on_replay(letters, dispatcher):
    """Regression: ``B`` values came back as objects, and the record failed as a bad B value."""
    record = event("post_insert")
    record["dynamodb"]["NewImage"]["thumb"] = {"B": b"\x89PNG\x00"}
    record["dynamodb"]["NewImage"]["blobs"] = {"BS": [b"\x00", b"\x01"]}
    letters.add(SOURCE, "unexpected ConnectionError", record)

    assert replay(letters, dispatcher).replayed == 1
    assert [e.kind for e in dispatcher.events] == ["post_published"] and letters.count() == 0


def test_gap_markers_and_unknown_sources_never_block_replay(letters, dispatcher):
    """Regression: replay read the oldest ``limit`` letters only, and passed over gap markers
    without removing them: as many gap markers as the limit blocked every other letter."""
    letters.add_many([(SOURCE, f"gap: trimmed data after {n}: gone", {}) for n in range(150)])
    letters.add_many([("somewhere-else", "who knows", {"n": n}) for n in range(3)])
    letters.add(SOURCE, "unexpected ConnectionError", event("follow_insert"))

    result = replay(letters, dispatcher, limit=100)

    assert (result.replayed, result.kept) == (1, 153)
    assert [e.kind for e in dispatcher.events] == ["follow_started"]
    assert letters.count() == 153  # gap markers stay for the operator to read and purge


def test_a_record_that_fails_again_is_kept_with_both_reasons(letters, dispatcher):
    letters.add(SOURCE, "unknown eventName 'UPSERT'", event("bad_event_name"))
    letters.add(SOURCE, "unexpected ConnectionError", event("follow_insert"))

    result = replay(letters, dispatcher)

    assert (result.replayed, result.failed_again) == (1, 1)
    (kept,) = letters.entries()
    assert kept["reason"] == "unknown eventName 'UPSERT'" and "UPSERT" in kept["replay_reason"]
    assert letters.count() == 1


def test_a_letter_cut_for_size_is_reported_and_kept_and_never_blocks(letters, dispatcher):
    huge = event("post_insert")
    huge["dynamodb"]["NewImage"]["content"] = {"S": "x" * 20_000}
    letters.add(SOURCE, "unexpected ConnectionError", huge)
    letters.add(SOURCE, "unexpected ConnectionError", event("follow_insert"))

    result = replay(letters, dispatcher, limit=1)

    assert (result.truncated, result.replayed) == (1, 1)
    assert [e.kind for e in dispatcher.events] == ["follow_started"]
    (kept,) = letters.entries()
    assert kept["truncated"] is True
    assert kept["payload"]["dynamodb"]["Keys"] == huge["dynamodb"]["Keys"]


def test_dlq_list_and_purge_page_through_every_letter(
    monkeypatch: pytest.MonkeyPatch, dynamodb: Any, letters: DeadLetters
) -> None:
    from click.testing import CliRunner

    import feedpipe.cli
    from feedpipe.config import load_settings
    from feedpipe.services import Services

    letters.add_many([("regen", f"bad {n:03d}", f"job {n}") for n in range(250)])
    services = Services(load_settings({}), _stores=SimpleNamespace(dead_letters=letters))  # type: ignore[arg-type]
    monkeypatch.setattr(feedpipe.cli, "_start", lambda ctx, **_: services)
    limits: list[int] = []
    dynamodb.meta.events.register("provide-client-params.dynamodb.Query",
                                  lambda params, **_: limits.append(params["Limit"]))
    runner = CliRunner()

    every = runner.invoke(feedpipe.cli.main, ["dlq", "list", "--limit", "0", "--json"])
    reasons = [json.loads(line)["reason"] for line in every.output.splitlines()]
    assert len(reasons) == 250 and set(reasons) == {f"bad {n:03d}" for n in range(250)}
    assert limits and max(limits) <= 100, "read a page at a time"
    newest = runner.invoke(feedpipe.cli.main, ["dlq", "list"]).output.splitlines()
    assert len(newest) == 21 and newest[-1] == "250 dead letters in all"
    assert runner.invoke(feedpipe.cli.main, ["dlq", "purge", "--yes"]).output == "purged 250 dead letters\n"
    assert letters.count() == 0


def test_every_task_that_dead_letters_its_payloads_can_be_replayed():
    """A task taking ``payloads`` dead-letters them as ``task:{name}``; replay must know its queue
    (a backfill segment's letter was kept for ever when it did not)."""
    import inspect

    from feedpipe.config import load_settings
    from feedpipe.core.catalog import REPLAYABLE_TASKS
    from feedpipe.worker import WorkerApp

    app = WorkerApp(load_settings({}))
    dead_lettering = {
        name for name, task in app.tasks.items()
        if name.startswith("feedpipe.") and "payloads" in inspect.signature(task.run).parameters
    }
    assert dead_lettering and dead_lettering == REPLAYABLE_TASKS


def test_a_task_letter_goes_back_to_its_task_and_a_scheduled_tasks_letter_stays(letters, dispatcher):
    payload = {"kind": "follow_started", "follower_id": "fan", "followed_id": "star"}
    letters.add("task:feedpipe.follows.apply", "retries exhausted: throttled", payload)
    letters.add("task:feedpipe.maintenance.trim_caches", "retries exhausted", {"cursor": "0"})

    result = replay(letters, dispatcher)

    assert (result.replayed, result.kept) == (1, 1)
    assert dispatcher.sent == [("feedpipe.follows.apply", [payload])]
    assert [kept["source"] for kept in letters.entries()] == ["task:feedpipe.maintenance.trim_caches"]
