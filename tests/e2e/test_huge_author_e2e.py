"""Fan-out-on-read end to end: a real ``feedpipe consume`` and prefork ``feedpipe worker`` on a
moto server and a real Redis, with the threshold on. An author who crosses it between two posts
has the first pushed to every follower and the second kept in their list; readers see both,
once; a deleted post leaves every reader; an author below the threshold still fans out; and a
Redis that lost everything still serves every feed right."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from feedpipe.core import keys
from feedpipe.reader import read_feed
from tests.e2e.harness import Processes, World, pipeline_env, wait_until

pytestmark = pytest.mark.e2e

THRESHOLD = 1200
FANS = THRESHOLD - 1  # star is one follower short of huge: three fan-out chunks of 500
WARM = 40
SETTLE_SECONDS = 120


@pytest.fixture
def env(aws_env, redis_urls):
    return pipeline_env(aws_env, redis_urls, FEEDPIPE_FANOUT_ON_READ_FOLLOWERS=str(THRESHOLD))


def build_history(world: World) -> list[str]:
    """star with FANS followers (and that count on the profile, as the app keeps it), mid with a
    few, and a news post cached in the first WARM fans' feeds, so they are warm."""
    world.user("star", "mid", "news", "newbie", "outsider")
    fans = [f"f{i:04d}" for i in range(FANS)]
    world.bulk_follow(fans, "star")
    world.dynamodb.update_item(  # bulk_follow skips the counters the app keeps
        TableName="SocialMediaApp",
        Key={"PK": {"S": keys.user_pk("star")}, "SK": {"S": keys.PROFILE_SK}},
        UpdateExpression="ADD followers_count :n", ExpressionAttributeValues={":n": {"N": str(FANS)}},
    )
    world.bulk_follow([*fans[:10], "outsider"], "mid")
    world.bulk_follow([*fans[:WARM], "outsider"], "news")
    world.post("news", "n0")
    world.historic_fanout("n0", warm=[*fans[:WARM], "outsider"])
    world.mark_history_consumed()
    return fans


def expected(world: World, user: str) -> list[str]:
    """The live posts of everyone ``user`` follows, newest first (post ids sort by time here)."""
    due = [p for p, (author, live) in world.posts.items() if live and user in world.follows[author]]
    return sorted(due, key=lambda p: _created(world, p), reverse=True)


def _created(world: World, post_id: str) -> str:
    item = world.dynamodb.get_item(
        TableName="SocialMediaApp", Key={"PK": {"S": keys.post_pk(post_id)}, "SK": {"S": keys.POST_SK}}
    ).get("Item")
    return item["created_at"]["S"] if item else ""


def readers_right(world: World, users: Iterable[str]) -> bool:
    return all(_read(world, u) == expected(world, u) for u in users)


def _read(world: World, user: str) -> list[str]:
    return [m["postId"] for m in read_feed(world.stores, user)]


def assert_readers_right(world: World, users: Iterable[str], procs: Processes) -> None:
    users = list(users)
    try:
        wait_until(lambda: readers_right(world, users), SETTLE_SECONDS, "every reader to be right")
    except AssertionError:
        wrong = {u: (_read(world, u), expected(world, u)) for u in users if _read(world, u) != expected(world, u)}
        sample = dict(list(wrong.items())[:3])
        raise AssertionError(f"{len(wrong)} readers wrong, e.g. {sample}\n{procs.logs()}") from None


def test_a_huge_author_is_served_by_fan_out_on_read(world: World, procs: Processes) -> None:
    fans = build_history(world)
    sample = [*fans[:5], *fans[WARM : WARM + 5], fans[-1], "newbie", "outsider"]
    procs.worker()

    world.post("star", "p1")  # one follower short: pushed to every follower
    procs.consume_until_idle()
    wait_until(lambda: "p1" in world.durable_feeds()[fans[-1]], SETTLE_SECONDS, "p1 to reach every fan")

    world.follow("newbie", "star")  # the app's counter reaches the threshold: star is huge
    world.post("star", "p2")
    world.post("star", "p3")
    world.delete("p3")
    world.post("mid", "m1")  # below the threshold: pushed
    world.post("star", "p4")
    procs.consume_until_idle()
    assert_readers_right(world, sample, procs)

    durable = world.durable_feeds()
    assert all("p1" in durable[f] for f in fans)  # pushed before star was huge
    # Never pushed; only the new follower's backfill (one user, up to 20 posts) may hold them.
    assert not any({"p2", "p3", "p4"} & feed for user, feed in durable.items() if user != "newbie")
    assert "p1" in durable["newbie"] and "p3" not in durable["newbie"]
    assert durable[fans[0]] == {"n0", "p1", "m1"} and durable["outsider"] == {"n0", "m1"}
    assert _read(world, fans[0]) == ["p4", "m1", "p2", "p1", "n0"]
    assert _read(world, "outsider") == ["m1", "n0"]  # never sees star's posts
    cached = world.cached_feeds()
    assert set(cached) == {*fans[:WARM], "outsider"}  # reads and pulls warmed nobody
    assert "p4" not in cached[fans[0]]

    procs.stop_all()
    world.redis.flushdb()  # Redis lost everything: lists, the huge-author set, every cached feed
    assert readers_right(world, sample), {u: _read(world, u) for u in sample}
