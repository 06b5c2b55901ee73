"""The whole pipeline on real parts: the app writes to a moto server's table, ``feedpipe consume``
and a prefork ``feedpipe worker`` run as subprocesses on a real Redis broker, and every feed
(durable and cached) must end exactly as the contract says, crash or no crash."""

from __future__ import annotations

import pytest

from feedpipe.core import keys
from tests.e2e.harness import KILLED_WORKER_VISIBILITY, Processes, World, marked_env, pipeline_env, wait_until

pytestmark = pytest.mark.e2e

# Small pages and chunks keep the walks as they are at scale (several planners splitting the
# follower range, chunks handed out) on a graph moto writes quickly: each post's fan-out is
# more than six GSI pages of PAGE, in chunks of CHUNK.
STAR_FOLLOWERS = 650
PAGE = 100
CHUNK = 250
SETTLE_SECONDS = 240


def build_history(world: World) -> list[str]:
    """What the app had before feedpipe's consumer started: a big account, a small one, and
    posts already delivered, cached in the feeds of the active (warm) users.

    Warm users also follow "news", whose post keeps their cached feed from ever emptying: Redis
    drops an emptied sorted set, and a feed emptied by removals is cold (by design) until the
    app rebuilds it; which removals empty a feed depends on task order."""
    world.user("star", "alice", "bob", "carol", "dave", "newbie", "news")
    fans = [f"f{i:04d}" for i in range(STAR_FOLLOWERS)]
    warm = [*fans[:100], "bob"]
    world.bulk_follow(fans, "star")
    world.bulk_follow([*fans[:50], "bob"], "alice")
    world.bulk_follow(warm, "news")
    world.post("star", "p0")
    world.post("news", "n0")
    world.historic_fanout("p0", warm=[])
    world.historic_fanout("n0", warm=warm)
    world.mark_history_consumed()
    return fans


def live_traffic(world: World, fans: list[str]) -> None:
    world.post("star", "p1")
    world.post("alice", "a1")
    world.unfollow(fans[1], "star")
    world.post("star", "p2")
    world.post("star", "p3")
    world.delete("p3")  # soft delete: MODIFY is_deleted = true
    world.post("alice", "a2")
    world.remove("a2")  # hard delete: REMOVE
    world.post("star", "p4", visibility="private")
    world.follow("newbie", "star")
    world.follow("carol", "alice")
    world.follow("dave", "alice")
    world.unfollow("dave", "alice")
    world.follow(fans[60], "alice")  # a warm feed gets a backfill


def settle(world: World, procs: Processes) -> None:
    try:
        wait_until(world.settled, SETTLE_SECONDS, "every feed to be right")
    except AssertionError:
        world.assert_feeds_right()  # fails with a diff of the wrong feeds
        raise AssertionError(procs.logs()) from None
    world.assert_feeds_right()


@pytest.fixture
def env(aws_env, redis_urls, request):
    return pipeline_env(aws_env, redis_urls, FEEDPIPE_FOLLOWER_PAGE_SIZE=str(PAGE),
                        FEEDPIPE_FANOUT_CHUNK_SIZE=str(CHUNK), **marked_env(request))


def test_stream_records_become_exact_feeds(world: World, procs: Processes) -> None:
    fans = build_history(world)
    live_traffic(world, fans)
    # Bad input from the app: a post missing its author, and one with an unreadable date.
    world.dynamodb.put_item(TableName="SocialMediaApp", Item={
        "PK": {"S": "POST#orphan"}, "SK": {"S": "METADATA"}, "post_id": {"S": "orphan"},
        "created_at": {"S": "2026-11-25T10:00:00.000Z"}, "content": {"S": "no author"}})
    world.dynamodb.put_item(TableName="SocialMediaApp", Item={
        "PK": {"S": "POST#baddate"}, "SK": {"S": "METADATA"}, "post_id": {"S": "baddate"},
        "author_id": {"S": "star"}, "created_at": {"S": "yesterday"}, "content": {"S": "x"}})
    world.post("star", "p5")  # after the bad records: the shard kept moving

    procs.worker()
    totals = procs.consume_until_idle()
    assert totals["dead_lettered"] == 2 and totals["dispatched"] >= 12

    settle(world, procs)
    feeds = world.durable_feeds()
    assert feeds["f0000"] == {"n0", "p0", "p1", "p2", "p5", "a1"}  # fan-out of both authors
    assert feeds["f0001"] == {"n0", "a1"}  # unfollowed star: every star post left
    assert feeds["newbie"] == {"p0", "p1", "p2", "p5"}  # backfill, without p3 (deleted), p4 (private)
    assert feeds["dave"] == set() and feeds["carol"] == {"a1"}
    assert fans[-1] not in world.cached_feeds()  # a cold feed is never recreated by fan-out
    assert world.redis.ttl(keys.feed_cache("f0000")) > 3000  # TTL refreshed on write
    reasons = sorted(e["reason"] for e in world.stores.dead_letters.entries())
    assert "author_id" in reasons[1] and "created_at" in reasons[0], reasons


# One consumer at a time here: the second takes the dead one's lease once it has seen it stand
# still for the failover time, so a shorter one (renewed every half second) ends that wait sooner.
@pytest.mark.processes_env(FEEDPIPE_LEASE_FAILOVER_SECONDS="1.5")
def test_consumer_killed_mid_stream_loses_nothing(world: World, procs: Processes) -> None:
    fans = build_history(world)
    live_traffic(world, fans)
    procs.worker()
    consumer = procs.consumer()
    wait_until(lambda: _has_post(world, fans[0], "p1"), 120, "the first fan-out to start")
    procs.kill9(consumer)

    world.post("star", "p6")  # written while no consumer runs
    world.unfollow(fans[3], "star")
    procs.consume_until_idle()
    settle(world, procs)


@pytest.mark.processes_env(**KILLED_WORKER_VISIBILITY)
def test_worker_killed_mid_fanout_loses_nothing(world: World, procs: Processes) -> None:
    fans = build_history(world)
    live_traffic(world, fans)
    worker = procs.worker()
    procs.consume_until_idle()
    wait_until(lambda: _has_post(world, fans[0], "p1"), 120, "the first fan-out to start")
    procs.kill9(worker)  # the whole prefork group: parent and children, unacked tasks in hand
    assert not world.feeds_right(), "the crash came too late to test anything"

    procs.worker()  # unacked tasks come back after the visibility timeout
    settle(world, procs)


def _has_post(world: World, user: str, post_id: str) -> bool:
    return bool(
        world.dynamodb.query(
            TableName="SocialMediaApp",
            KeyConditionExpression="PK = :pk",
            FilterExpression="post_id = :p",
            ExpressionAttributeValues={":pk": {"S": keys.feed_pk(user)}, ":p": {"S": post_id}},
        )["Items"]
    )
