"""``feedpipe audit`` on a finished run of the real pipeline: clean, then corrupted in every way
an operator, a bug or a restore could, then ``feedpipe audit --all --repair`` as a subprocess,
and every feed exact again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from feedpipe.core import keys
from feedpipe.core.records import post_from_image
from tests.e2e.harness import Processes, World, pipeline_env, wait_until

pytestmark = pytest.mark.e2e

AUTHORS = ["ann", "ben", "cy"]
READERS = [f"r{i}" for i in range(6)]


@pytest.fixture
def env(aws_env, redis_urls):
    return pipeline_env(aws_env, redis_urls)


def finished_run(world: World, procs: Processes) -> None:
    world.user(*AUTHORS, *READERS)
    for n, reader in enumerate(READERS):
        for author in AUTHORS[: 1 + n % 3]:
            world.follow(reader, author)
    for i in range(4):
        for author in AUTHORS:
            world.post(author, f"{author}{i}")
    world.delete("ben1")
    procs.worker()
    procs.consume_until_idle()
    wait_until(world.settled, 120, "the pipeline to finish")
    result = procs.run("rebuild", "r2", "r4", "r5")  # warm: their app sessions read feeds
    assert result.returncode == 0, result.stderr
    world.warm.update({"r2", "r4", "r5"})
    wait_until(world.settled, 60, "warm caches")


def audit(procs: Processes, *args: str) -> tuple[int, dict[str, Any]]:
    result = procs.run("audit", *args, "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def found(report: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(r["user_id"], d["store"], d["kind"]) for r in report["results"] for d in r["found"]}


def corrupt(world: World) -> set[tuple[str, str, str]]:
    """Every kind of drift, each where a user would see it; returns (user, store, kind)."""
    db, cache = world.dynamodb, world.redis
    items = {u: world.stores.table.feed_items(u) for u in READERS}
    # r1 lost an item; r3 got an item from nowhere and one from a feed it has no business in.
    db.delete_item(TableName="SocialMediaApp", Key={"PK": {"S": "FEED#r1"}, "SK": {"S": items["r1"][0]["SK"]}})
    bogus = {k: v for k, v in items["r5"][0].items()}
    put_raw(world, "r3", {**bogus, "SK": "2026-11-25T09:00:00.000Z#nope", "post_id": "nope"})
    cy_item = next(i for i in items["r5"] if i["author_id"] == "cy")
    put_raw(world, "r0", cy_item)
    # r0 holds a stale copy: the author's name as it never was.
    put_raw(world, "r0", {**items["r0"][-1], "author_username": "someone_else"})
    # Warm caches: r2 lost a member and its TTL, r4 holds another user's member and a stale
    # (non-canonical) one, r5 is over length.
    r2 = cache.zrevrange("feed:r2", 0, -1, withscores=True)
    cache.zrem("feed:r2", r2[0][0])
    cache.persist("feed:r2")
    r4 = cache.zrevrange("feed:r4", 0, -1, withscores=True)
    foreign = next(m for m, _ in cache.zrevrange("feed:r5", 0, -1, withscores=True) if b'"cy"' in m)
    cache.zadd("feed:r4", {foreign: 1, json.dumps(json.loads(r4[0][0])): r4[0][1]})
    cache.zrem("feed:r4", r4[0][0])
    cache.zadd("feed:r5", {json.dumps({"postId": f"junk{i}"}): i for i in range(101)})
    # A delete the pipeline never saw (its stream record lost): cy2 stays in feeds.
    db.update_item(TableName="SocialMediaApp", Key={"PK": {"S": "POST#cy2"}, "SK": {"S": "METADATA"}},
                   UpdateExpression="SET is_deleted = :t", ExpressionAttributeValues={":t": {"BOOL": True}})
    world.posts["cy2"] = ("cy", False)
    return {
        ("r1", "dynamodb", "missing"), ("r3", "dynamodb", "extra"), ("r0", "dynamodb", "extra"),
        ("r0", "dynamodb", "stale"), ("r2", "redis", "missing"), ("r2", "redis", "missing_ttl"),
        ("r4", "redis", "extra"), ("r4", "redis", "stale"), ("r5", "redis", "over_long"),
        ("r5", "redis", "extra"), ("r5", "dynamodb", "extra"),
    }


def put_raw(world: World, user: str, item: dict[str, Any]) -> None:
    typed = {k: {"S": v} if isinstance(v, str) else {"BOOL": v} if isinstance(v, bool) else {"N": str(v)}
             for k, v in item.items()}
    typed.update(PK={"S": keys.feed_pk(user)}, GSI1PK={"S": keys.feed_gsi1pk(user)}, user_id={"S": user})
    world.dynamodb.put_item(TableName="SocialMediaApp", Item=typed)


def caches_canonical(world: World) -> bool:
    """Every warm cache is exactly the canonical members of its durable feed, with a TTL."""
    for user in world.warm:
        want = [(world.stores.member(post_from_image(world.stores.table.post_image(i["post_id"]) or {})),
                 0) for i in world.stores.table.feed_items(user)]
        have = [(m.decode(), 0) for m in world.redis.zrevrange(f"feed:{user}", 0, -1)]
        if have != want or world.redis.ttl(f"feed:{user}") <= 0:
            return False
    return True


def test_audit_finds_every_corruption_and_repair_makes_every_feed_exact(world: World, procs: Processes) -> None:
    finished_run(world, procs)
    code, clean = audit(procs, "--all")
    assert (code, clean["drifted_users"], clean["users"]) == (0, 0, len(AUTHORS) + len(READERS)), clean

    injected = corrupt(world)
    table = procs.run("audit", "r2")
    assert table.returncode == 1 and "missing_ttl" in table.stdout, table.stdout

    code, repaired = audit(procs, "--all", "--repair")
    assert injected <= found(repaired), f"not found: {injected - found(repaired)}"
    assert (code, repaired["unrepaired"]) == (0, {}), repaired
    world.assert_feeds_right()
    assert caches_canonical(world)
    code, after = audit(procs, "--all")
    assert (code, after["drifted_users"]) == (0, 0), after
