"""Feed trimming: feeds end capped at their newest entries, nothing else is touched, and the
resumable table sweep reaches every user. The cache sweep runs on fakeredis (SCAN's slices, keys
of other types), the durable trim on moto where it is about DynamoDB's pages and batches, and on
the in-memory table (held to moto by ``test_store_contract``) where it is about the rule."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from feedpipe.adapters.redis_client import SCAN_START
from feedpipe.core import keys
from feedpipe.feeds.memory import MemoryTable
from feedpipe.feeds.trimming import sweep_cached_feeds, sweep_durable_feeds, trim_durable_feed
from tests.adapters.conftest import APP_TABLE, AppWrites
from tests.memory_app import MemoryDynamo

BASE_MS = 1_705_314_600_000


def _fill_feed(redis_client, user_id: str, size: int) -> None:
    members = {json.dumps({"postId": f"{user_id}-p{i}"}): BASE_MS + i for i in range(size)}
    redis_client.zadd(keys.feed_cache(user_id), members)


def _cached_post_ids(redis_client, user_id: str) -> list[str]:
    """The app's getFeed: newest first, JSON.parse each member."""
    return [json.loads(m)["postId"] for m in redis_client.zrevrange(keys.feed_cache(user_id), 0, -1)]


# -- cached feeds ----------------------------------------------------------------------------------


def test_sweep_caps_long_feeds_at_their_newest_and_leaves_the_rest_alone(redis_client, cache):
    sizes = {f"u{i}": 12 if i % 3 == 0 else 4 for i in range(30)}  # 10 long, 20 short
    for user_id, size in sizes.items():
        _fill_feed(redis_client, user_id, size)
    redis_client.sadd(keys.followers_cache("1"), "u2")
    redis_client.lpush(keys.REGEN_QUEUE, json.dumps({"user_id": "u1", "action": "regen"}))
    redis_client.set(keys.feed_cache("str"), "not a sorted set")

    stats = sweep_cached_feeds(cache, max_length=5, scan_count=7)

    for user_id, size in sizes.items():
        newest = [f"{user_id}-p{i}" for i in reversed(range(size))][:5]
        assert _cached_post_ids(redis_client, user_id) == newest
    assert redis_client.smembers(keys.followers_cache("1")) == {b"u2"}
    assert redis_client.llen(keys.REGEN_QUEUE) == 1
    assert redis_client.get(keys.feed_cache("str")) == b"not a sorted set"
    assert (stats.keys_trimmed, stats.members_removed) == (10, 10 * 7)
    assert stats.keys_seen >= 30 and stats.slices >= 1
    assert stats.slowest_call_seconds > 0


def test_sweep_keeps_the_feed_ttl(redis_client, cache):
    _fill_feed(redis_client, "u_bob", 9)
    redis_client.expire(keys.feed_cache("u_bob"), 600)

    sweep_cached_feeds(cache, max_length=3)

    assert redis_client.zcard(keys.feed_cache("u_bob")) == 3
    assert 0 < redis_client.ttl(keys.feed_cache("u_bob")) <= 600


def test_sweep_trims_a_feed_whose_name_is_not_utf8(redis_client, cache):
    """The app owns the ``feed:`` names: one that is not UTF-8 is trimmed like any other, and the
    sweep goes on past it (a name it could not decode would stop every sweep at that cursor)."""
    odd = keys.FEED_CACHE_PREFIX.encode() + b"\xff\xfe"
    redis_client.zadd(odd, {json.dumps({"postId": f"p{i}"}): BASE_MS + i for i in range(9)})
    _fill_feed(redis_client, "u_bob", 9)

    stats = sweep_cached_feeds(cache, max_length=3)

    assert (redis_client.zcard(odd), redis_client.zcard(keys.feed_cache("u_bob"))) == (3, 3)
    assert stats.keys_trimmed == 2


def test_sweep_of_an_empty_redis_reports_nothing_done(redis_client, cache):
    stats = sweep_cached_feeds(cache, max_length=5)

    assert (stats.keys_seen, stats.keys_trimmed, stats.members_removed) == (0, 0, 0)


def test_sweep_refuses_a_cap_that_would_empty_every_feed(redis_client, cache):
    _fill_feed(redis_client, "u_bob", 3)

    with pytest.raises(ValueError):
        sweep_cached_feeds(cache, max_length=0)

    assert redis_client.zcard(keys.feed_cache("u_bob")) == 3


# -- durable feeds ---------------------------------------------------------------------------------


def _created_at(n: int) -> str:
    return f"2024-01-15T10:{n // 60:02d}:{n % 60:02d}.000Z"


def _put_feed(dynamodb: Any, user_id: str, size: int) -> None:
    items = [
        {
            "PK": {"S": keys.feed_pk(user_id)},
            "SK": {"S": keys.feed_sk(_created_at(n), f"p{n}")},
            "post_id": {"S": f"p{n}"},
            "created_at": {"S": _created_at(n)},
        }
        for n in range(size)
    ]
    for start in range(0, len(items), 25):
        requests = [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]
        dynamodb.batch_write_item(RequestItems={APP_TABLE: requests})


def _durable_sks(dynamodb: Any, user_id: str) -> list[str]:
    """The user's durable feed, newest first, read the way a rebuild reads it."""
    sks: list[str] = []
    request: dict[str, Any] = {
        "TableName": APP_TABLE,
        "KeyConditionExpression": "PK = :pk",
        "ExpressionAttributeValues": {":pk": {"S": keys.feed_pk(user_id)}},
        "ScanIndexForward": False,
        "ConsistentRead": True,
    }
    while True:
        response = dynamodb.query(**request)
        sks += [i["SK"]["S"] for i in response["Items"]]
        if "LastEvaluatedKey" not in response:
            return sks
        request["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def _newest_sks(size: int, keep: int) -> list[str]:
    return [keys.feed_sk(_created_at(n), f"p{n}") for n in reversed(range(size))][:keep]


def test_trim_keeps_exactly_the_newest_items(dynamodb, feed_table, batch_write_calls):
    _put_feed(dynamodb, "u_bob", 80)
    batch_write_calls.clear()

    deleted = trim_durable_feed(feed_table, "u_bob", keep=20)

    assert deleted == 60
    assert _durable_sks(dynamodb, "u_bob") == _newest_sks(80, 20)
    assert all(len(call) <= 25 for call in batch_write_calls)
    assert all("DeleteRequest" in r for call in batch_write_calls for r in call)


def _memory_sks(table: MemoryTable, user_id: str) -> list[str]:
    """The user's durable feed, newest first, as ``_durable_sks`` reads it."""
    return [i["SK"] for i in table.feed_items(user_id)]


def test_trim_leaves_a_short_feed_and_other_users_alone():
    table = MemoryTable()
    _put_feed(MemoryDynamo(table), "u_bob", 5)
    _put_feed(MemoryDynamo(table), "u_carol", 30)

    assert trim_durable_feed(table, "u_bob", keep=20) == 0
    assert trim_durable_feed(table, "u_nobody", keep=20) == 0

    assert _memory_sks(table, "u_bob") == _newest_sks(5, 20)
    assert len(_memory_sks(table, "u_carol")) == 30


def test_trim_across_query_pages(dynamodb, feed_table, monkeypatch):
    """A feed bigger than a page: the surplus spans page boundaries and is still exact."""
    _put_feed(dynamodb, "u_bob", 70)
    query = dynamodb.query
    monkeypatch.setattr(dynamodb, "query", lambda **kw: query(**kw, Limit=9))

    deleted = trim_durable_feed(feed_table, "u_bob", keep=22)

    assert deleted == 48
    assert _durable_sks(dynamodb, "u_bob") == _newest_sks(70, 22)


def test_sweep_over_several_calls_visits_every_user():
    feed_table = MemoryTable()
    dynamodb = MemoryDynamo(feed_table)
    app = AppWrites(dynamodb)
    users = [f"u{i:03d}" for i in range(120)]
    for n, user_id in enumerate(users):
        _put_feed(dynamodb, user_id, 6 if n % 2 else 3)
    app.follow("u000", "u001")  # app items the sweep must skip
    app.post("p_app", "u001", "2024-01-15T09:00:00.000Z")

    cursor: dict[str, Any] | None = None
    calls = deleted = 0
    while True:
        step = sweep_durable_feeds(feed_table, keep=4, cursor=cursor, max_pages=3, page_size=25)
        calls += 1
        deleted += step.items_deleted
        cursor = step.next_cursor
        if cursor is None:
            break
        json.loads(json.dumps(cursor))  # the periodic task stores it as JSON
        assert calls < 100

    assert calls > 1
    assert deleted == 60 * 2
    for n, user_id in enumerate(users):
        assert _memory_sks(feed_table, user_id) == _newest_sks(6 if n % 2 else 3, 4)
    assert feed_table.post_image("p_app")


def _over_budget_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every look at the clock is an hour later: each slice spends the whole budget."""
    import time

    import feedpipe.feeds.trimming as trimming

    clock = [0.0]

    def look() -> float:
        clock[0] += 3600.0
        return clock[0]

    monkeypatch.setattr(trimming, "time", SimpleNamespace(monotonic=look, perf_counter=time.perf_counter))


def test_a_sweep_over_budget_stops_after_a_slice_and_goes_on_from_its_cursor(redis_client, cache, monkeypatch):
    sizes = {f"u{i}": 12 if i % 3 == 0 else 4 for i in range(30)}
    for user_id, size in sizes.items():
        _fill_feed(redis_client, user_id, size)
    _over_budget_clock(monkeypatch)

    calls, cursor, trimmed = 0, SCAN_START, 0
    while True:
        stats = sweep_cached_feeds(cache, max_length=5, scan_count=4, cursor=cursor, budget_seconds=30)
        calls, cursor, trimmed = calls + 1, stats.next_cursor, trimmed + stats.keys_trimmed
        assert stats.slices == 1  # one slice, then the budget is spent
        if cursor == SCAN_START:
            break

    assert calls > 1
    assert trimmed == 10
    for user_id, size in sizes.items():
        assert _cached_post_ids(redis_client, user_id) == [f"{user_id}-p{i}" for i in reversed(range(size))][:5]


def test_the_trim_task_hands_the_rest_of_its_sweep_on_to_fresh_messages(redis_client, monkeypatch):
    """The sweep used to walk every key in one task, however many there were, and outlive
    the visibility timeout on a big Redis."""
    from feedpipe import tasks as catalog
    from feedpipe.adapters.redis_feeds import FeedCache
    from feedpipe.config import load_settings
    from feedpipe.services import Services
    from feedpipe.worker import WorkerApp

    users = [f"u{i}" for i in range(1200)]  # more than one SCAN slice (500) holds
    for user_id in users:
        _fill_feed(redis_client, user_id, 7)
    settings = load_settings({"FEEDPIPE_FEED_MAX_LENGTH": "5"})
    stores = SimpleNamespace(settings=settings, cache=FeedCache(redis_client, 5, 3600))
    services = Services(settings, _stores=stores, _redis=redis_client)  # type: ignore[arg-type]
    app = WorkerApp(services=services)
    trim_caches = app.tasks[catalog.TRIM_CACHES]
    _over_budget_clock(monkeypatch)
    sent: list[list[Any]] = []
    monkeypatch.setattr(app, "send_task", lambda name, args, **_: sent.append(args))

    trim_caches.run()  # as beat sends it: no cursor
    tasks = 1
    while sent:
        trim_caches.run(*sent.pop())
        tasks += 1

    assert tasks > 1
    assert all(redis_client.zcard(keys.feed_cache(user_id)) == 5 for user_id in users)
