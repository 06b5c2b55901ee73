"""Feed regeneration on real parts: the app's queue drained by a prefork worker that
``feedpipe beat`` schedules, a worker killed mid-drain, and the operator commands."""

from __future__ import annotations

import json
import random
import re

import pytest

from feedpipe.core import keys
from feedpipe.feeds.regen import drain
from feedpipe.services import build_stores
from tests.e2e.harness import KILLED_WORKER_VISIBILITY, Processes, World, marked_env, pipeline_env, wait_until
from tests.unit.conftest import make_post

pytestmark = pytest.mark.e2e

MAX = 5  # feed_max_length here, so many users have more durable items than their cache holds


@pytest.fixture
def env(aws_env, redis_urls, request):
    return pipeline_env(
        aws_env, redis_urls,
        FEEDPIPE_FEED_MAX_LENGTH=str(MAX),
        FEEDPIPE_REGEN_DRAIN_EVERY_SECONDS="0.5",
        FEEDPIPE_REGEN_LEASE_SECONDS="3",
        FEEDPIPE_BEAT_LOCK_SECONDS="3",
        **marked_env(request),
    )


def durable_feeds_for(world: World, users: list[str], rng: random.Random) -> None:
    """Give each user 1-9 durable feed items, the items fan-out writes to a cold feed (these
    users have no cache: nothing else to write), all in one batched write (one ``add_post``
    per item took ~10 s for 300 users)."""
    assert not world.redis.exists(*(keys.feed_cache(u) for u in users)), "a warm feed: write it with add_post"
    items = []
    for n, user in enumerate(users):
        for i in range(rng.randint(1, 9)):
            post = make_post(f"p{n}_{i}", author_id=f"a{i}", created_at=f"2026-11-0{1 + i % 9}T10:00:{n % 60:02d}.000Z",
                             created_at_ms=1_700_000_000_000 + i * 1000 + n)
            items.extend(world.stores.format.items([user], post))
    world.stores.table.put_items(items)


def push_jobs(world: World, users: list[str], count: int, rng: random.Random) -> None:
    jobs = [json.dumps({"user_id": rng.choice(users), "action": "follow", "target_user": "x",
                        "timestamp": "2026-11-25T10:00:00.000Z"}) for _ in range(count)]
    for i in range(0, len(jobs), 1000):
        world.redis.lpush(keys.REGEN_QUEUE, *jobs[i:i + 1000])


def caches_equal_durable(world: World, users: list[str]) -> bool:
    for user in users:
        newest = [i["post_id"] for i in world.stores.table.feed_items(user, limit=MAX)]
        cached = [json.loads(e.member)["postId"] for e in world.stores.cache.members(user)]
        if cached != newest:
            return False
    return True


def drained(world: World) -> bool:
    return world.stores.regen_queue.depth() == 0 and world.stores.regen_queue.processing_depth() == 0


def rebuilds_logged(procs: Processes) -> tuple[int, int]:
    found = re.findall(r"DrainStats\(jobs=(\d+), rebuilds=(\d+)", procs.logs(tail=10**7))
    return sum(int(j) for j, _ in found), sum(int(r) for _, r in found)


def test_ten_thousand_jobs_are_coalesced_and_every_cache_ends_right(world: World, procs: Processes) -> None:
    rng = random.Random(3)
    users = [f"u{i:03d}" for i in range(250)]
    world.users.update(users)
    durable_feeds_for(world, users, rng)
    push_jobs(world, users, 10_000, rng)

    procs.worker()
    procs.beat()
    # Drained means every rebuild is with the broker; the caches follow as workers take them.
    wait_until(lambda: drained(world) and caches_equal_durable(world, users), 180, "every cache to be rebuilt")

    jobs, rebuilds = rebuilds_logged(procs)
    assert jobs == 10_000
    assert rebuilds <= 500, f"{rebuilds} rebuilds for {jobs} jobs: not coalesced"  # a batch is 5,000 jobs


@pytest.mark.processes_env(**KILLED_WORKER_VISIBILITY)
def test_a_worker_killed_mid_regeneration_loses_nothing(world: World, procs: Processes) -> None:
    """The drain hands its rebuilds to tasks; the worker dies with some done and some in
    flight (unacknowledged with the broker, or still on a processing list)."""
    rng = random.Random(4)
    users = [f"k{i:03d}" for i in range(300)]
    durable_feeds_for(world, users, rng)  # every cache cold: a cache key appears once rebuilt
    push_jobs(world, users, 3_000, rng)

    worker = procs.worker()
    procs.beat()
    wait_until(lambda: 10 <= cached_count(world) <= 200, 120, "some of the rebuilds to be done")
    procs.kill9(worker)
    assert cached_count(world) < len(users), "the kill came too late: every rebuild was done"

    procs.worker()  # takes the redelivered rebuild tasks (and any stranded jobs) over
    wait_until(lambda: drained(world) and caches_equal_durable(world, users), 180, "every rebuild to be redone")


def cached_count(world: World) -> int:
    return sum(1 for _ in world.redis.scan_iter(match=f"{keys.FEED_CACHE_PREFIX}k*", count=1000))


def test_bad_jobs_are_dead_lettered_and_replay_once_fixed(world: World, procs: Processes) -> None:
    durable_feeds_for(world, ["good", "later"], random.Random(5))
    for job in ['{"user_id": "good", "action": "follow"}', "not json", '{"action": "follow"}',
                '{"user_id": "later", "action": "refresh"}']:
        world.redis.lpush(keys.REGEN_QUEUE, job)

    stats = drain(world.stores, world.stores.regen_queue, budget_seconds=30)

    assert (stats.jobs, stats.rebuilds, stats.dead_lettered) == (4, 1, 3)
    reasons = sorted(e["reason"] for e in world.stores.dead_letters.entries())
    assert reasons == ["job is not JSON: Expecting value: line 1 column 1 (char 0)",
                       "missing or non-string user_id", "unknown action 'refresh'"]
    assert caches_equal_durable(world, ["good"]) and not world.redis.exists(keys.feed_cache("later"))

    # The operator teaches feedpipe the new action, then replays.
    fixed = {"FEEDPIPE_REGEN_ACTIONS": "follow,unfollow,rebuild,regenerate,refresh"}
    result = procs.run("dlq", "replay", env=fixed)
    assert result.returncode == 0, result.stderr
    assert "replayed 3 dead letters (3 regen)" in result.stdout
    fixed_stores = build_stores(world.settings.model_copy(update={"regen_actions": frozenset(fixed[
        "FEEDPIPE_REGEN_ACTIONS"].split(","))}), world.dynamodb)
    stats = drain(fixed_stores, fixed_stores.regen_queue, budget_seconds=30)
    assert (stats.rebuilds, stats.dead_lettered) == (1, 2)  # the two unfixable ones are back
    assert caches_equal_durable(world, ["later"])
    assert world.stores.dead_letters.count() == 2


def test_rebuild_restores_a_feed_deleted_by_hand_and_status_reports(world: World, procs: Processes) -> None:
    world.user("x", "a", "b", "c")
    world.bulk_follow(["x"], "a")
    world.bulk_follow(["x"], "b")
    for author, post in [("a", "pa1"), ("a", "pa2"), ("b", "pb1"), ("c", "pc1")]:
        world.post(author, post)
        world.historic_fanout(post, warm=[])
    world.delete("pa2")
    keys_x = [{"PK": {"S": keys.feed_pk("x")}, "SK": {"S": i["SK"]}} for i in world.stores.table.feed_items("x")]
    world.stores.table.delete_keys(keys_x)  # the feed, damaged by hand
    world.redis.zadd(keys.feed_cache("x"), {"stale": 1})  # x is active: the cache exists

    result = procs.run("rebuild", "x")

    assert result.returncode == 0, result.stderr
    assert "rebuilt 1 of 1 users" in result.stdout and "100%" in result.stderr  # the progress bar
    assert world.durable_feeds()["x"] == {"pa1", "pb1"}
    assert {json.loads(e.member)["postId"] for e in world.stores.cache.members("x")} == {"pa1", "pb1"}

    procs.consume_until_idle()
    status = procs.run("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    (shard,) = report["stream"]["shards"]
    assert shard["checkpoint"].isdigit() and shard["last_record_age_seconds"] is not None
    assert report["queues"][keys.REGEN_QUEUE] == 0 and report["dead_letters"] == 0
    text = procs.run("status").stdout
    assert "dead letters" in text and shard["shard"] in text


def test_a_second_beat_waits_and_takes_over_when_the_first_dies(world: World, procs: Processes) -> None:
    lock = keys.DEFAULT_PREFIX + "beat:lock"
    first = procs.beat()
    wait_until(lambda: world.redis.exists(lock), 60, "the first beat to take the lock")
    holder = world.redis.get(lock)
    procs.beat()
    wait_until(lambda: "waiting for the beat lock" in procs.logs(), 60, "the second beat to wait")
    assert world.redis.get(lock) == holder  # the second one does not schedule

    procs.kill9(first)
    wait_until(lambda: world.redis.get(lock) not in (None, holder), 30, "the second beat to take over")
    procs.worker()
    world.redis.lpush(keys.REGEN_QUEUE, json.dumps({"user_id": "z", "action": "follow"}))
    wait_until(lambda: drained(world), 60, "the new beat's drains to run")


def test_users_who_follow_before_anyone_posts_have_their_feeds_cached_when_posts_arrive(
    world: World, procs: Processes
) -> None:
    """The seed app's order: followers first, posts after. Each follow pushes a regen job; the
    rebuilt feed is empty, yet the user is warm from then on, so posts reach their cache."""
    authors, fans = ["ann", "ben"], [f"n{i:02d}" for i in range(12)]
    world.user(*authors, *fans, "idle")
    world.mark_history_consumed()
    procs.worker()
    procs.beat()
    procs.consumer()
    for i, fan in enumerate(fans):
        world.follow(fan, authors[i % 2])
        if i % 3 == 0:
            world.follow(fan, authors[(i + 1) % 2])
    wait_until(lambda: drained(world) and world.warm_now() == set(fans), 120, "every follower to be warm")
    world.warm.update(fans)
    assert not any(world.redis.exists(keys.feed_cache(u)) for u in fans)  # warm, and empty

    for n in range(2):  # at most four posts per feed: every cache holds its whole feed (MAX is 5)
        for author in authors:
            world.post(author, f"{author}{n}")
    try:  # not world.settled: the beat keeps the broker busy with drains every half second
        wait_until(world.feeds_right, 120, "every feed, durable and cached, to be right")
    finally:
        world.assert_feeds_right()
    assert all(world.stores.cache.members(fan) for fan in fans)
    assert world.warm_now() == set(fans)
    # Each follow's re-check, once GSI1 has surely caught up (FEEDPIPE_GSI_LAG_SECONDS), runs on
    # the real worker and changes nothing here (moto's GSIs are strongly consistent).
    follows = len(fans) + len(fans[::3])
    wait_until(lambda: len(re.findall(r"feedpipe\.follows\.recheck\[\S+\] succeeded", procs.logs(tail=10**7)))
               == follows, 60, "every follow's re-check to run")
    world.assert_feeds_right()
