"""Draining ``feed_regen_queue`` and rebuilding feeds (contract section 3): the table and the
feeds on the in-memory stores (held to moto and fakeredis by ``test_store_contract``), the queue
and its leases on fakeredis, the dead letters on moto where their stored form is checked.

The app LPUSHes ``{"user_id", "action", "target_user", "timestamp"}``; feedpipe takes jobs from
the other end, never loses one to a crash, coalesces duplicates, rebuilds ``feed:{user_id}`` so
it equals the newest ``feed_max_length`` durable items, and dead-letters what it cannot read.
Each test checks what a user (or an operator) would see: the durable feed ``FEED#{user}``, the
cached feed ``feed:{user}``, the queue and feedpipe's own keys, and the dead letters.

Time never passes for real: lease expiry is simulated by replacing the clock the queue reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest

import feedpipe.adapters.regen_queue as regen_queue_module
import feedpipe.feeds.regen as regen_module
from feedpipe.adapters.regen_queue import RegenQueue
from feedpipe.config import load_settings
from feedpipe.core.events import Post
from feedpipe.core.keys import REGEN_QUEUE, OwnKeys
from feedpipe.core.letters import decode_payload
from feedpipe.core.records import post_from_image
from feedpipe.dev.appsim import AppWriter
from feedpipe.feeds.delivery import add_post, remove_post
from feedpipe.feeds.memory import MemoryTable, memory_stores
from feedpipe.feeds.memory_cache import MemoryCache
from feedpipe.feeds.rebuild import rebuild_cache, rebuild_durable
from feedpipe.feeds.regen import DrainStats, drain
from feedpipe.feeds.stores import Stores
from feedpipe.services import build_dead_letters
from tests.adapters.conftest import inject
from tests.fakes import FakeDeadLetters
from tests.memory_app import MemoryDynamo, MemoryFeedsRedis

from .conftest import APP_TABLE

MAX = 5  # feed_max_length
TTL = 3600  # feed_ttl_seconds
BACKFILL = 3  # backfill_posts
PREFIX = "fp-test:"
BUDGET = 60.0  # drain budget; every drain here ends because the queue is empty


class World:
    """The app's table and cache, feedpipe's stores over them, and ways to look at both."""

    def __init__(self, stores: Stores, app: AppWriter, redis: MemoryFeedsRedis) -> None:
        self.stores = stores
        self.app = app
        self.redis = redis
        self.own = OwnKeys(PREFIX)
        self._stamp = 0

    # -- the app's side ------------------------------------------------------------------------

    def new_post(self, post_id: str, author: str = "alice") -> Post:
        """The app publishes a post, each one newer than the last."""
        self._stamp += 1
        minutes, seconds = divmod(self._stamp, 60)
        self.app.create_post(
            author, f"user_{author}", f"text of {post_id}", post_id=post_id,
            created_at=f"2024-03-01T10:{minutes:02d}:{seconds:02d}.000Z",
        )
        image = self.stores.table.post_image(post_id)
        assert image is not None
        return post_from_image(image)

    def push(self, user_id: str, action: str = "follow", target: str = "alice") -> str:
        """The job the seed's followUser LPUSHes."""
        job = json.dumps({
            "user_id": user_id, "action": action, "target_user": target,
            "timestamp": "2024-03-01T10:00:00.000Z",
        })
        self.redis.lpush(REGEN_QUEUE, job)
        return job

    # -- feedpipe's durable side, written directly ------------------------------------------------

    def put_durable(self, posts: list[Post], users: list[str]) -> None:
        for post in posts:
            self.stores.table.put_items(self.stores.format.items(users, post))

    def delete_durable_by_hand(self, user: str, author: str | None = None) -> None:
        """An operator deletes ``FEED#{user}`` items with the plain client (all, or one author's)."""
        client = self.app.dynamodb
        assert isinstance(self.stores.table, MemoryTable)
        found = [i for (pk, _), i in self.stores.table.items.items() if pk == f"FEED#{user}"]
        for item in found:
            if author is None or item["author_id"] == author:
                client.delete_item(TableName=APP_TABLE, Key={"PK": {"S": item["PK"]}, "SK": {"S": item["SK"]}})

    # -- what a user sees ------------------------------------------------------------------------

    def durable(self, user: str) -> list[str]:
        """Post ids in ``FEED#{user}``, newest first."""
        return [item["post_id"] for item in self.stores.table.feed_items(user)]

    def cached(self, user: str) -> list[str] | None:
        """Post ids in ``feed:{user}``, newest first, as the app's getFeed parses them; None
        when the key does not exist."""
        key = f"feed:{user}"
        if not self.redis.exists(key):
            return None
        return [json.loads(m)["postId"] for m in self.redis.zrevrange(key, 0, -1)]

    def expected_cache(self, user: str) -> list[str] | None:
        """What the contract says ``feed:{user}`` holds after a rebuild: the newest MAX durable
        items, or no key at all for an empty durable feed."""
        return self.durable(user)[:MAX] or None

    def assert_cache_matches_durable(self, user: str) -> None:
        assert self.cached(user) == self.expected_cache(user), f"feed:{user}"

    # -- feedpipe's own keys -------------------------------------------------------------------------

    def processing_keys(self) -> list[bytes]:
        return list(self.redis.scan_iter(match=f"{PREFIX}regen:*:processing:*"))

    def assert_queue_drained(self) -> None:
        assert self.redis.llen(REGEN_QUEUE) == 0, "jobs left on feed_regen_queue"
        assert self.processing_keys() == [], "processing lists left behind"
        assert self.redis.zcard(self.own.regen_drains) == 0, "leases left behind"
        assert self.stores.regen_queue.processing_depth() == 0

    def drain(self) -> DrainStats:
        return drain(self.stores, self.stores.regen_queue, BUDGET)


class Clock:
    """The wall clock the regen queue reads for its leases; moved by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(regen_queue_module, "time", SimpleNamespace(time=c.time))
    return c


def make_world(dynamodb: Any = None, **settings: str) -> tuple[World, fakeredis.FakeRedis]:
    """The world on in-memory stores, the regen queue on a fakeredis; the dead letters on
    ``dynamodb`` when given (moto), else kept in a list."""
    redis = fakeredis.FakeRedis()
    env = {
        "FEEDPIPE_TABLE_NAME": APP_TABLE,
        "FEEDPIPE_KEY_PREFIX": PREFIX,
        "FEEDPIPE_FEED_MAX_LENGTH": str(MAX),
        "FEEDPIPE_FEED_TTL_SECONDS": str(TTL),
        "FEEDPIPE_BACKFILL_POSTS": str(BACKFILL),
        "FEEDPIPE_REGEN_BATCH": "500",
        "FEEDPIPE_REGEN_LEASE_SECONDS": "1",
        "FEEDPIPE_WRITE_CONCURRENCY": "1",
        **{f"FEEDPIPE_{k.upper()}": v for k, v in settings.items()},
    }
    config = load_settings(env)
    letters = FakeDeadLetters() if dynamodb is None else build_dead_letters(config, dynamodb)
    queue = RegenQueue(redis, OwnKeys(PREFIX), config.regen_lease_seconds)
    stores = memory_stores(config, dead_letters=letters, regen_queue=queue)
    assert isinstance(stores.cache, MemoryCache)
    view = MemoryFeedsRedis(stores.cache, redis)
    world = World(stores, AppWriter(MemoryDynamo(stores.table), view, APP_TABLE, transactional=False), view)
    return world, redis


def make_users(w: World) -> World:
    for user in ["alice", "carol", "zed"]:
        w.app.create_user(user)
    return w


@pytest.fixture
def world() -> Iterator[World]:
    w, redis = make_world()
    yield make_users(w)
    redis.close()


@pytest.fixture
def rebuilds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The users the drain rebuilds, in call order (rebuild_cache wrapped where drain calls it)."""
    calls: list[str] = []
    real = regen_module.rebuild_cache

    def counting(stores: Stores, user_id: str, *args: Any, **kwargs: Any) -> int:
        calls.append(user_id)
        return real(stores, user_id, *args, **kwargs)

    monkeypatch.setattr(regen_module, "rebuild_cache", counting)
    return calls




def posts(world: World, count: int, author: str = "alice", tag: str = "a") -> list[Post]:
    return [world.new_post(f"{tag}{i}", author) for i in range(1, count + 1)]


def ids(items: list[Post]) -> list[str]:
    """Post ids newest first."""
    return [p.post_id for p in sorted(items, key=lambda p: p.created_at_ms, reverse=True)]


# -- 1. taken from the other end; nothing left behind --------------------------------------------


def test_jobs_are_taken_oldest_first_from_the_end_opposite_the_apps_lpush(world, clock):
    pushed = [world.push(u) for u in ["u1", "u2", "u3"]]
    queue = world.stores.regen_queue
    drain_id = queue.open_drain()

    assert queue.take(drain_id, 2) == [j.encode() for j in pushed[:2]]
    assert queue.depth() == 1 and queue.processing_depth() == 2
    queue.finish(drain_id)
    assert queue.processing_depth() == 0


def test_drain_rebuilds_in_arrival_order_and_leaves_no_queue_list_or_lease(world, clock, rebuilds):
    a = posts(world, 2)
    world.put_durable(a, ["u1", "u2", "u3"])
    for user in ["u2", "u3", "u1"]:
        world.push(user)

    stats = world.drain()

    assert rebuilds == ["u2", "u3", "u1"]
    assert (stats.jobs, stats.rebuilds, stats.dead_lettered, stats.recovered) == (3, 3, 0, 0)
    world.assert_queue_drained()
    for user in ["u1", "u2", "u3"]:
        assert world.cached(user) == ids(a)


def test_drain_of_an_empty_queue_does_nothing_and_leaves_no_lease(world, clock, rebuilds):
    stats = world.drain()
    assert stats == DrainStats()
    assert rebuilds == []
    world.assert_queue_drained()


def test_drain_in_small_batches_empties_the_queue(clock):
    world, redis = make_world(regen_batch="4")
    world.app.create_user("alice")
    a = posts(world, 2)
    users = [f"u{i}" for i in range(10)]
    world.put_durable(a, users)
    for user in users:
        world.push(user)

    stats = world.drain()

    assert stats.jobs == 10 and stats.rebuilds == 10
    world.assert_queue_drained()
    for user in users:
        assert world.cached(user) == ids(a)
    redis.close()


# -- 2. coalescing -----------------------------------------------------------------------------


def test_300_jobs_for_20_users_make_20_rebuilds_each_to_the_newest_max_items(world, clock, rebuilds):
    pool = posts(world, 8)  # a1 (oldest) .. a8 (newest)
    users = [f"u{i:02d}" for i in range(20)]
    sizes = {user: i % 9 for i, user in enumerate(users)}  # 0..8 durable items: some empty, some > MAX
    for j, post in enumerate(pool):
        world.put_durable([post], [u for u in users if sizes[u] > j])
    # Some caches start stale (a foreign member, wrong items), some cold.
    for user in users[::3]:
        world.redis.zadd(f"feed:{user}", {json.dumps({"postId": "stale"}): 1})
    for i in range(300):
        world.push(users[(i * 7) % 20], action=["follow", "unfollow"][i % 2])

    stats = world.drain()

    assert stats.rebuilds == 20 and stats.jobs == 300 and stats.dead_lettered == 0
    assert sorted(rebuilds) == users and len(rebuilds) == 20
    world.assert_queue_drained()
    for user in users:
        expected = ids(pool[: sizes[user]])[:MAX] or None
        assert world.cached(user) == expected, f"feed:{user}"
        world.assert_cache_matches_durable(user)
    assert world.cached("u00") is None  # empty durable feed: no key, even though it was warm
    assert world.cached("u08") == ["a8", "a7", "a6", "a5", "a4"]


def test_rebuilt_members_are_the_ones_fan_out_writes(world, clock):
    """Redelivered fan-out must not duplicate what a rebuild wrote: same canonical member."""
    a = posts(world, 2)
    world.put_durable(a, ["bob"])
    world.push("bob")
    world.drain()

    add_post(world.stores, a[1], ["bob"])  # the fan-out's (redelivered) cache write
    assert world.cached("bob") == ids(a)
    assert world.redis.ttl("feed:bob") > TTL - 5


# -- 3. malformed jobs are dead-lettered --------------------------------------------------------


def test_malformed_jobs_are_dead_lettered_and_good_ones_in_the_batch_done(dynamodb, tables, clock):
    world, redis = make_world(dynamodb)  # the letters in their table, as an operator reads them
    make_users(world)
    a = posts(world, 2)
    world.put_durable(a, ["bob", "dan"])
    bad: list[tuple[bytes, str]] = [
        (b"this is not json", "not JSON"),
        (json.dumps({"action": "follow", "target_user": "alice"}).encode(), "user_id"),
        (json.dumps({"user_id": "bob", "action": "explode"}).encode(), "unknown action 'explode'"),
        (b'{"user_id": "caf\xe9", "action": "follow"}', "not UTF-8"),
    ]
    world.push("bob")
    for raw, _ in bad:
        world.redis.lpush(REGEN_QUEUE, raw)
    world.push("dan")

    stats = world.drain()

    assert (stats.jobs, stats.rebuilds, stats.dead_lettered) == (6, 2, 4)
    world.assert_queue_drained()
    assert world.cached("bob") == ids(a) and world.cached("dan") == ids(a)
    letters = world.stores.dead_letters.entries()
    assert len(letters) == 4
    assert {letter["source"] for letter in letters} == {"regen"}
    by_payload = {_as_bytes(decode_payload(letter["payload"])): letter["reason"] for letter in letters}
    assert set(by_payload) == {raw for raw, _ in bad}, "each dead letter carries its raw job"
    for raw, reason in bad:
        assert reason in by_payload[raw]
    redis.close()


def _as_bytes(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else str(payload).encode("utf-8")


def test_job_with_a_list_action_is_dead_lettered_not_a_crash(world, clock):
    a = posts(world, 1)
    world.put_durable(a, ["bob"])
    poison = json.dumps({"user_id": "bob", "action": ["follow"]})
    world.redis.lpush(REGEN_QUEUE, poison)
    world.push("bob")

    stats = world.drain()

    assert stats.dead_lettered == 1
    world.assert_queue_drained()
    assert world.cached("bob") == ids(a)


# -- 4. a drain that dies ---------------------------------------------------------------------------


def test_jobs_of_a_dead_drain_are_recovered_after_its_lease_and_redone_first(world, clock, rebuilds):
    a = posts(world, 3)
    world.put_durable(a, ["bob", "dan", "eve"])
    world.redis.zadd("feed:bob", {json.dumps({"postId": "stale"}): 1})
    world.push("bob")
    world.push("dan")
    # Another worker's drain takes both jobs and dies before finishing.
    dead = RegenQueue(world.redis, world.own, lease_seconds=1)
    dead_id = dead.open_drain()
    assert len(dead.take(dead_id, 10)) == 2
    world.push("eve")  # a later job, behind the stranded ones
    clock.now += 1.5  # the dead drain's lease runs out

    stats = world.drain()

    assert stats.recovered == 2
    assert rebuilds == ["bob", "dan", "eve"]  # stranded jobs first, in their original order
    world.assert_queue_drained()
    for user in ["bob", "dan", "eve"]:
        assert world.cached(user) == ids(a)


def test_a_drain_whose_lease_has_not_expired_is_left_alone(world, clock, rebuilds):
    a = posts(world, 2)
    world.put_durable(a, ["bob", "dan"])
    world.push("bob")
    live = RegenQueue(world.redis, world.own, lease_seconds=1)
    live_id = live.open_drain()
    assert len(live.take(live_id, 10)) == 1
    world.push("dan")
    clock.now += 0.5  # still within its lease

    stats = world.drain()

    assert stats.recovered == 0
    assert rebuilds == ["dan"]
    assert world.cached("bob") is None and world.cached("dan") == ids(a)
    assert world.redis.llen(world.own.regen_processing(live_id)) == 1  # its job is still its own
    assert world.redis.zscore(world.own.regen_drains, live_id) is not None
    # The live drain finishes its work; nothing is left.
    live.finish(live_id)
    world.assert_queue_drained()


def test_a_renewed_lease_is_not_taken_over(world, clock):
    world.push("bob")
    live = RegenQueue(world.redis, world.own, lease_seconds=1)
    live_id = live.open_drain()
    live.take(live_id, 10)
    for _ in range(3):  # it keeps working, renewing as drain does after each rebuild
        clock.now += 0.8
        live.renew(live_id)
        assert world.stores.regen_queue.recover_stranded() == 0
    clock.now += 1.5  # then it dies
    assert world.stores.regen_queue.recover_stranded() == 1
    assert world.redis.llen(REGEN_QUEUE) == 1


def test_a_drain_that_crashes_mid_batch_loses_no_job(world, clock, monkeypatch):
    a = posts(world, 2)
    users = ["bob", "dan", "eve"]
    world.put_durable(a, users)
    for user in users:
        world.push(user)
    real = regen_module.rebuild_cache
    calls = [0]

    def crashing(stores: Stores, user_id: str, *args: Any, **kwargs: Any) -> int:
        calls[0] += 1
        if calls[0] == 2:
            raise ConnectionError("worker lost Redis")
        return real(stores, user_id, *args, **kwargs)

    monkeypatch.setattr(regen_module, "rebuild_cache", crashing)
    with pytest.raises(ConnectionError):
        world.drain()
    assert world.redis.llen(REGEN_QUEUE) == 0
    assert world.stores.regen_queue.processing_depth() == 3  # held, not lost

    monkeypatch.setattr(regen_module, "rebuild_cache", real)
    clock.now += 2
    stats = world.drain()

    assert stats.recovered == 3 and stats.rebuilds == 3
    world.assert_queue_drained()
    for user in users:
        assert world.cached(user) == ids(a)


# -- 4b. rebuilds handed out to tasks (what the worker's drain does) ------------------------------


def test_a_drain_hands_rebuilds_out_in_groups_and_they_make_every_cache_right(clock):
    world, redis = make_world(regen_users_per_task="4")
    world.app.create_user("alice")
    a = posts(world, 2)
    users = [f"u{i}" for i in range(10)]
    world.put_durable(a, users)
    world.app.follow("u7", "alice")  # its job is one of the 30 below
    world.redis.delete(REGEN_QUEUE)
    for n in range(30):
        world.push(users[n % 10], action="regenerate" if n == 7 else "follow")
    handed: list[list[tuple[str, bool]]] = []

    stats = drain(world.stores, world.stores.regen_queue, BUDGET, hand_out=handed.append)

    assert [len(group) for group in handed] == [4, 4, 2]  # 30 jobs, 10 users, 4 a task
    assert sorted(u for group in handed for u, _ in group) == users
    assert [u for group in handed for u, durable in group if durable] == ["u7"]
    assert (stats.jobs, stats.rebuilds) == (30, 10)
    world.assert_queue_drained()  # acknowledged once handed out: the tasks hold the work now
    assert all(world.cached(u) is None for u in users)  # nothing rebuilt in the drain itself
    world.delete_durable_by_hand("u7")
    for group in handed:  # the rebuild tasks run
        regen_module.rebuild_users(world.stores, group)
    for user in users:
        assert world.cached(user) == ids(a), user  # u7's durable feed was repaired first
    redis.close()


def test_a_hand_out_that_fails_leaves_the_jobs_for_the_next_drain(world, clock):
    a = posts(world, 2)
    users = ["bob", "dan", "eve"]
    world.put_durable(a, users)
    for user in users:
        world.push(user)

    def broker_down(group: list[tuple[str, bool]]) -> None:
        raise ConnectionError("broker unreachable")

    with pytest.raises(ConnectionError):
        drain(world.stores, world.stores.regen_queue, BUDGET, hand_out=broker_down)
    assert world.stores.regen_queue.processing_depth() == 3  # held, not lost

    clock.now += 2  # the dead drain's lease runs out
    handed: list[list[tuple[str, bool]]] = []
    stats = drain(world.stores, world.stores.regen_queue, BUDGET, hand_out=handed.append)

    assert stats.recovered == 3 and sorted(u for g in handed for u, _ in g) == users
    world.assert_queue_drained()


# -- 5. fan-out while a rebuild runs ---------------------------------------------------------------


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
@pytest.mark.parametrize("durable_items", [2, 8], ids=["short", "over-max"])
def test_post_fanned_out_during_the_rebuild_is_not_lost(world, monkeypatch, warm, durable_items):
    a = posts(world, durable_items)
    world.put_durable(a, ["bob"])
    if warm:
        world.redis.zadd("feed:bob", {json.dumps({"postId": "stale"}): 1})
    late = world.new_post("late", author="carol")
    calls = inject(
        monkeypatch, world.stores.table, "feed_items", lambda: add_post(world.stores, late, ["bob"])
    )

    rebuild_cache(world.stores, "bob")

    assert calls[0] >= 2, "the rebuild re-read after the fan-out"
    assert world.durable("bob")[0] == "late"
    assert world.cached("bob") == ids([*a, late])[:MAX]


def test_post_fanned_out_into_an_empty_feed_during_the_rebuild_is_not_lost(world, monkeypatch):
    late = world.new_post("late", author="carol")
    inject(monkeypatch, world.stores.table, "feed_items", lambda: add_post(world.stores, late, ["bob"]))

    rebuild_cache(world.stores, "bob")

    assert world.cached("bob") == ["late"]


def test_post_fanned_out_after_the_rebuilds_reread_lands_too(world, monkeypatch):
    a = posts(world, 8)
    world.put_durable(a, ["bob"])
    late = world.new_post("late", author="carol")
    inject(
        monkeypatch, world.stores.table, "feed_items",
        lambda: add_post(world.stores, late, ["bob"]), call=2,
    )

    rebuild_cache(world.stores, "bob")

    assert world.cached("bob") == ids([*a, late])[:MAX]


def test_post_removed_during_the_rebuild_is_gone_from_the_cache(world, monkeypatch):
    a = posts(world, 3)
    world.put_durable(a, ["bob"])
    world.redis.zadd("feed:bob", {json.dumps({"postId": "stale"}): 1})
    gone = a[1]
    calls = inject(
        monkeypatch, world.stores.table, "feed_items", lambda: remove_post(world.stores, gone, ["bob"])
    )

    rebuild_cache(world.stores, "bob")

    assert calls[0] >= 2
    assert world.durable("bob") == ["a3", "a1"]
    assert world.cached("bob") == ["a3", "a1"]


def test_post_removed_during_the_rebuild_of_a_full_feed_leaves_the_newest_max(world, monkeypatch):
    a = posts(world, 8)
    world.put_durable(a, ["bob"])
    world.redis.zadd("feed:bob", {json.dumps({"postId": "stale"}): 1})
    gone = a[6]  # a7, inside the newest MAX
    inject(monkeypatch, world.stores.table, "feed_items", lambda: remove_post(world.stores, gone, ["bob"]))

    rebuild_cache(world.stores, "bob")

    assert "a7" not in (world.cached("bob") or [])
    assert world.cached("bob") == ["a8", "a6", "a5", "a4", "a3"]


# -- 6. TTL ---------------------------------------------------------------------------------------


def _warm_with_ttl(world: World, ttl: int) -> None:
    world.redis.zadd("feed:bob", {json.dumps({"postId": "stale"}): 1})
    world.redis.expire("feed:bob", ttl)


def test_keep_ttl_keeps_the_remaining_ttl(world):
    world.put_durable(posts(world, 2), ["bob"])
    _warm_with_ttl(world, 100)

    rebuild_cache(world.stores, "bob", keep_ttl=True)

    assert world.cached("bob") == ["a2", "a1"]
    assert 0 < world.redis.ttl("feed:bob") <= 100


def test_without_keep_ttl_the_ttl_is_refreshed(world):
    world.put_durable(posts(world, 2), ["bob"])
    _warm_with_ttl(world, 100)

    rebuild_cache(world.stores, "bob", keep_ttl=False)

    assert world.cached("bob") == ["a2", "a1"]
    assert TTL - 5 < world.redis.ttl("feed:bob") <= TTL


def test_keep_ttl_never_leaves_a_rebuilt_feed_without_a_ttl(world):
    world.put_durable(posts(world, 2), ["bob"])
    world.redis.zadd("feed:bob", {json.dumps({"postId": "stale"}): 1})

    rebuild_cache(world.stores, "bob", keep_ttl=True)

    assert world.cached("bob") == ["a2", "a1"]
    assert TTL - 5 < world.redis.ttl("feed:bob") <= TTL


def test_a_scheduled_rebuild_never_warms_a_user_who_went_cold_since_the_walk_found_them(world):
    """The walk finds bob warm; his feed and marker expire before his rebuild runs. A rebuild
    keeping the TTL must leave him cold, or fan-out writes an inactive user's feed for an hour."""
    world.put_durable(posts(world, 2), ["bob"])

    rebuild_cache(world.stores, "bob", keep_ttl=True)

    assert not world.stores.cache.is_warm("bob")
    assert not world.redis.exists("feed:bob")


def test_drained_jobs_refresh_the_ttl(world, clock):
    world.put_durable(posts(world, 1), ["bob"])
    _warm_with_ttl(world, 100)
    world.push("bob")
    world.drain()
    assert TTL - 5 < world.redis.ttl("feed:bob") <= TTL


# -- 7. rebuilding the durable feed -------------------------------------------------------------------


@pytest.fixture
def bob_follows(world: World) -> dict[str, list[Post]]:
    """bob follows alice (5 posts) and carol (2 posts); zed (1 post) he does not follow.
    The app's follow LPUSHes regen jobs; they are cleared so each test pushes its own."""
    world.app.create_user("bob")
    made = {"alice": posts(world, 5, "alice", "a"), "carol": posts(world, 2, "carol", "c"),
            "zed": posts(world, 1, "zed", "z")}
    world.app.follow("bob", "alice")
    world.app.follow("bob", "carol")
    world.redis.delete(REGEN_QUEUE)
    return made


def backfilled(made: dict[str, list[Post]]) -> list[str]:
    """bob's durable feed after a full repair: each followee's newest BACKFILL posts."""
    return ids(made["alice"][-BACKFILL:] + made["carol"][-BACKFILL:])


def test_rebuild_durable_restores_deleted_items_and_drops_unfollowed_authors(world, bob_follows):
    made = bob_follows
    world.put_durable(made["zed"], ["bob"])  # an author bob does not follow
    world.delete_durable_by_hand("bob", author="alice")
    assert world.durable("bob") == ["z1"]

    result = rebuild_durable(world.stores, "bob")

    assert world.durable("bob") == backfilled(made)
    assert (result.followees, result.authors_unmerged, result.posts_backfilled) == (2, 1, 5)
    rebuild_cache(world.stores, "bob")
    world.assert_cache_matches_durable("bob")
    assert world.cached("bob") == backfilled(made)[:MAX]


def test_rebuild_durable_drops_an_author_after_the_app_unfollow(world, bob_follows):
    made = bob_follows
    world.put_durable(made["alice"] + made["carol"], ["bob"])
    world.app.unfollow("bob", "carol")

    rebuild_durable(world.stores, "bob")
    rebuild_cache(world.stores, "bob")

    assert world.durable("bob") == ids(made["alice"])  # older items stay; carol's are gone
    assert world.cached("bob") == ids(made["alice"])[:MAX]


def test_rebuild_durable_twice_changes_nothing(world, bob_follows):
    world.delete_durable_by_hand("bob")
    rebuild_durable(world.stores, "bob")
    first = world.durable("bob")
    rebuild_durable(world.stores, "bob")
    assert world.durable("bob") == first == backfilled(bob_follows)


def test_rebuild_durable_retracts_a_deleted_followee_post(world, bob_follows):
    made = bob_follows
    world.put_durable(made["alice"], ["bob"])
    world.app.delete_post("a1")  # soft delete; its retraction never ran

    rebuild_durable(world.stores, "bob")

    assert "a1" not in world.durable("bob")


# -- 8. which jobs repair the durable feed --------------------------------------------------------------


@pytest.mark.parametrize("action", ["rebuild", "regenerate"])
def test_rebuild_job_repairs_the_durable_feed_then_the_cache(world, clock, bob_follows, action):
    made = bob_follows
    world.put_durable(made["zed"], ["bob"])
    world.delete_durable_by_hand("bob", author="alice")
    world.redis.zadd("feed:bob", {json.dumps({"postId": "stale"}): 1})
    world.push("bob", action=action, target="")

    stats = world.drain()

    assert stats.rebuilds == 1
    world.assert_queue_drained()
    assert world.durable("bob") == backfilled(made)
    world.assert_cache_matches_durable("bob")


def test_follow_job_rebuilds_only_the_cache(world, clock, bob_follows):
    made = bob_follows
    world.put_durable(made["alice"] + made["carol"] + made["zed"], ["bob"])
    world.delete_durable_by_hand("bob", author="alice")
    world.redis.zadd("feed:bob", {json.dumps({"postId": "stale"}): 1})
    world.push("bob", action="follow", target="alice")

    world.drain()

    # Not repaired: alice's deleted items stay deleted, zed's (unfollowed) items stay.
    assert world.durable("bob") == ids(made["carol"] + made["zed"])
    assert world.cached("bob") == ids(made["carol"] + made["zed"])


def test_any_rebuild_job_for_a_user_repairs_even_when_coalesced_with_follows(world, clock, bob_follows):
    made = bob_follows
    world.delete_durable_by_hand("bob")
    world.push("bob", action="follow")
    world.push("bob", action="rebuild")
    world.push("bob", action="unfollow")

    stats = world.drain()

    assert stats.rebuilds == 1 and stats.jobs == 3
    assert world.durable("bob") == backfilled(made)
    world.assert_cache_matches_durable("bob")


def test_a_durable_rebuild_over_budget_hands_on_and_ends_as_one_run_would(world, bob_follows, monkeypatch):
    """A user who follows thousands used to be rebuilt in one task, however long it took.
    Here every author's repair outlasts the budget: each task hands the rest on, and the
    chain ends with the same durable feed (and cache) as one unbudgeted run."""
    import feedpipe.feeds.rebuild as rebuild_module
    from feedpipe.feeds.rebuild import RebuildResume
    from feedpipe.feeds.regen import rebuild_user

    made = bob_follows
    world.put_durable(made["zed"] + made["carol"], ["bob"])  # zed is not followed: unmerged
    world.delete_durable_by_hand("bob", author="alice")  # alice's posts: backfilled
    world.app.delete_post("c1")  # its retraction never ran: retracted
    budget = world.stores.settings.task_budget_seconds
    clock = [0.0]

    def look() -> float:
        clock[0] += budget + 1  # each look is over a budget later: every repair spends it
        return clock[0]

    monkeypatch.setattr(rebuild_module, "time", SimpleNamespace(monotonic=look))
    handed: list[RebuildResume] = []
    tasks = 1
    finished = rebuild_user(world.stores, "bob", True, None, handed.append)
    while handed:
        assert not finished and world.cached("bob") is None  # the cache waits for the last piece
        tasks += 1
        finished = rebuild_user(world.stores, "bob", True, handed.pop(), handed.append)

    assert finished
    # alice, carol (backfill, which also takes the dead c1 out), zed (unmerge), then the cache;
    # the resumed run reads the feed again and finds nothing left to retract.
    assert tasks == 4
    expected = ids(made["alice"][-BACKFILL:] + made["carol"][1:])
    assert world.durable("bob") == expected
    world.assert_cache_matches_durable("bob")
