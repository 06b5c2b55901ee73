"""First deploy on a table with history, then drift, on the real pipeline.

``feedpipe consume`` starts at the stream's newest record (``FEEDPIPE_INITIAL_POSITION=LATEST``);
``feedpipe backfill`` builds every feed from the table while live traffic flows; the worker and
the backfill command are killed with ``kill -9`` mid-run, and a rerun finishes with every feed
exact. Then every kind of corruption is injected into that finished state, and
``feedpipe audit --all --repair`` (a subprocess) reports exactly what was injected, nothing else,
and makes every feed exact again.

moto cannot enable a stream on an existing table, so the history is written with the stream on
and no consumer; the consumer's first start passes over it.

CI runs a small table; ``dev.py reliability`` a big one (tests/reliability.py's LONG_MODE:
thousands of users, tens of thousands of follows and posts), on a moto whose Query and Scan
read only what they can match (tests/e2e/fast_moto.py), the history loaded by BatchWriteItem.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from feedpipe.adapters.backfill_progress import BackfillProgress
from feedpipe.adapters.dynamo import make_client
from feedpipe.adapters.leases import LATEST, LeaseTable
from feedpipe.adapters.streams import DynamoDBStreamSource
from feedpipe.core import keys
from feedpipe.core.records import post_from_image
from feedpipe.dev.local import MotoServer
from tests.e2e.harness import KILLED_WORKER_VISIBILITY, LEASES, TABLE, Processes, World, pipeline_env, wait_until
from tests.reliability import report_path, write_report

# dev.py reliability runs it on a bigger table (tests/reliability.py's LONG_MODE).
USER_COUNT = int(os.environ.get("FEEDPIPE_FIRST_DEPLOY_USERS", "20"))
USERS = [f"u{i:0{max(3, len(str(USER_COUNT - 1)))}d}" for i in range(USER_COUNT)]
FOLLOWS_PER_USER = int(os.environ.get("FEEDPIPE_FIRST_DEPLOY_FOLLOWS", str(4 * USER_COUNT))) // USER_COUNT
POSTS = int(os.environ.get("FEEDPIPE_FIRST_DEPLOY_POSTS", str(USER_COUNT * 5 // 2)))
HISTORY_POSTS_PER_AUTHOR = 15  # under the backfill depth (20), with room for live posts
WARM = USERS[:max(10, USER_COUNT // 10)]
LIVE_STEPS = max(4, USER_COUNT // 20)  # app writes before the backfill is killed, and again after
BIG = USER_COUNT > 200
SEGMENTS = 6
SLOW = 1 + USER_COUNT // 20  # waits scale with the table (ceilings, not sleeps)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600 * max(1, USER_COUNT // 100))]
Found = set[tuple[str, str, str]]  # (user, store, kind)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    """moto whose Query and Scan read only what they can match: on plain moto every one of
    the backfill's GSI Queries reads the whole table."""
    server = MotoServer(module="tests.e2e.fast_moto").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(aws_env, redis_urls):
    # The worker killed mid-backfill holds segments the rerun waits for: redelivered sooner (the
    # big table's tasks keep the default's room).
    return pipeline_env(aws_env, redis_urls, FEEDPIPE_INITIAL_POSITION="LATEST",
                        **({} if BIG else KILLED_WORKER_VISIBILITY))


def history(world: World, rng: random.Random) -> None:
    """The app's writes before feedpipe: follows, posts (under the backfill depth per author, so
    every live post of a followee belongs in the feed), deletes and private posts, and the app's
    own stale caches of some users' feeds."""
    follows = [(user, author) for user in USERS
               for author in rng.sample([u for u in USERS if u != user], FOLLOWS_PER_USER)]
    per_author: Counter[str] = Counter()
    posts = []
    for n in range(POSTS):
        author = rng.choice(USERS)
        while per_author[author] >= HISTORY_POSTS_PER_AUTHOR:
            author = rng.choice(USERS)
        per_author[author] += 1
        posts.append((author, f"h{n:05d}", "private" if n % 13 == 5 else "public"))
    world.load_history(USERS, follows, posts)
    for n in range(0, POSTS, 9):
        world.delete(f"h{n:05d}")
    for user in WARM:
        world.redis.zadd(f"feed:{user}", {json.dumps({"postId": "from-before"}): 1})
        world.redis.expire(f"feed:{user}", 3600)
        world.warm.add(user)


def pinned(world: World) -> bool:
    source = DynamoDBStreamSource(make_client("dynamodbstreams"), world.dynamodb, TABLE)
    leases = LeaseTable(world.dynamodb, LEASES, source.stream_id).list()
    return bool(leases) and all(lease.checkpoint not in (None, LATEST) for lease in leases.values())


def live_traffic(world: World, rng: random.Random, step: int) -> None:
    user, author = rng.sample(USERS, 2)
    if user in world.follows[author]:
        world.unfollow(user, author)
    else:
        world.follow(user, author)
    world.post(rng.choice(USERS), f"live{step:04d}")
    if step % 3 == 2:
        world.delete(f"live{step - 1:04d}")


def first_deploy(world: World, procs: Processes) -> AssertionError | None:
    """The history, then the pipeline started on it; None once every feed is right, else why not."""
    rng = random.Random(11)
    history(world, rng)
    early = procs.run("backfill", "--segments", str(SEGMENTS))
    assert early.returncode == 2 and "start `feedpipe consume` first" in early.stderr, early.stderr
    procs.consumer()
    concurrency = 4 if BIG else 2  # the tasks mostly wait on moto
    worker = procs.worker(concurrency)
    wait_until(lambda: pinned(world), 60, "the consumer to pin each shard at its newest record")

    progress = BackfillProgress(world.dynamodb, LEASES)
    command = procs._spawn("backfill", "backfill", "--segments", str(SEGMENTS), "--poll-seconds", "0.2")
    for step in range(LIVE_STEPS):
        live_traffic(world, rng, step)
    wait_until(lambda: any(s.users for s in progress.all(SEGMENTS)), 120 * SLOW, "the backfill to start")
    assert not all(s.done for s in progress.all(SEGMENTS)), "killed mid-run"
    procs.kill9(command)
    procs.kill9(worker)
    for step in range(LIVE_STEPS, 2 * LIVE_STEPS):
        live_traffic(world, rng, step)

    procs.worker(concurrency)
    rerun = procs.run("backfill", "--segments", str(SEGMENTS), "--poll-seconds", "0.2", timeout=300 * SLOW)
    assert rerun.returncode == 0, rerun.stderr[-3000:] + procs.logs()
    assert f"backfilled {len(USERS)} users" in rerun.stdout, rerun.stdout
    assert "first start at its newest record" in procs.logs(tail=10**6)
    try:
        wait_until(world.settled, 240 * SLOW, "every feed to be right")
    except AssertionError as exc:
        return exc
    return None


def wrong_items(world: World) -> tuple[int, int]:
    """(feed items checked, feed items wrong): durable and cached, each missing or extra item."""
    durable, expected = world.durable_feeds(), world.expected_feeds()
    cached = world.cached_feeds()
    want = world.expected_cached(cached)
    pairs = [(durable.get(u, set()), expected.get(u, set())) for u in set(durable) | set(expected)]
    pairs += [(cached.get(u, set()), want.get(u, set())) for u in set(cached) | set(want)]
    return sum(len(w) for _, w in pairs), sum(len(h ^ w) for h, w in pairs)


def write_figures(world: World, report_file: Path, started: float) -> None:
    checked, wrong = wrong_items(world)
    write_report(report_file, {
        "test": "first_deploy", "users": len(USERS), "follows": sum(map(len, world.follows.values())),
        "posts": len(world.posts), "dead_or_private": sum(1 for _, live in world.posts.values() if not live),
        "warm": len(WARM), "feed_items_checked": checked, "feed_items_wrong": wrong,
        "seconds": round(time.monotonic() - started, 1),
    })


def test_a_first_deploy_is_built_exactly_and_every_drift_after_it_is_found_and_repaired(
    world: World, procs: Processes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    started = time.monotonic()
    unsettled = first_deploy(world, procs)
    write_figures(world, report_path(tmp_path_factory.getbasetemp()), started)
    assert unsettled is None, str(unsettled)
    world.assert_feeds_right()
    procs.stop_all()  # so the delete below is one the pipeline never sees

    injected = corrupt(world)
    table = procs.run("audit", *sorted({u for u, store, _ in injected if store == "redis"}), timeout=120 * SLOW)
    assert table.returncode == 1 and "missing_ttl" in table.stdout, table.stdout
    result = procs.run("audit", "--all", "--repair", "--json", timeout=300 * SLOW)
    report = json.loads(result.stdout)
    found = {(r["user_id"], d["store"], d["kind"]) for r in report["results"] for d in r["found"]}
    assert found == injected, f"missed {injected - found}, falsely reported {found - injected}"
    assert (result.returncode, report["unrepaired"], report["users"]) == (0, {}, len(USERS)), report
    world.assert_feeds_right()
    assert caches_canonical(world)
    sample = procs.run("audit", "--sample", "5", "--json")
    assert (sample.returncode, json.loads(sample.stdout)["users"]) == (0, 5), sample.stdout


# -- corruption ------------------------------------------------------------------------------


def corrupt(world: World) -> Found:
    """Every kind of drift, each in a feed of its own; returns what the audit must report."""
    table, db, cache = world.stores.table, world.dynamodb, world.redis
    feeds = {u: table.feed_items(u) for u in USERS}
    follows = {u: set(table.followees(u)) for u in USERS}
    author = min((a for a in USERS if any(i["author_id"] == a for f in feeds.values() for i in f)),
                 key=lambda a: len(world.follows[a]))
    dead = next(i["post_id"] for f in feeds.values() for i in f if i["author_id"] == author)
    touched = set(world.follows[author])
    cold = [u for u in USERS if u not in touched and u not in WARM and feeds[u]]
    warm = [u for u in WARM if u not in touched and cache.zcard(f"feed:{u}") >= 2]
    a, b, c, d = cold[:4]
    w1, w2, w3 = warm[:3]
    injected: Found = set()
    # A delete the pipeline never saw (its stream record lost, say): the post stays in feeds.
    db.update_item(TableName=TABLE, Key={"PK": {"S": keys.post_pk(dead)}, "SK": {"S": keys.POST_SK}},
                   UpdateExpression="SET is_deleted = :t", ExpressionAttributeValues={":t": {"BOOL": True}})
    world.posts[dead] = (author, False)
    for user in touched:
        injected.add((user, "dynamodb", "extra"))
        if any(json.loads(m)["postId"] == dead for m in cache.zrange(f"feed:{user}", 0, -1)):
            injected.add((user, "redis", "extra"))
    db.delete_item(TableName=TABLE, Key={"PK": {"S": keys.feed_pk(a)}, "SK": {"S": feeds[a][0]["SK"]}})
    put_raw(world, b, {**feeds[b][0], "SK": "2026-11-25T09:00:00.000Z#nope", "post_id": "nope"})
    put_raw(world, c, foreign_item(feeds, follows[c] | {c, author}))
    put_raw(world, d, {**feeds[d][-1], "author_username": "someone_else"})
    injected |= {(a, "dynamodb", "missing"), (b, "dynamodb", "extra"), (c, "dynamodb", "extra"),
                 (d, "dynamodb", "stale")}
    newest, _ = cache.zrevrange(f"feed:{w1}", 0, 0, withscores=True)[0]
    cache.zrem(f"feed:{w1}", newest)
    cache.persist(f"feed:{w1}")
    item = foreign_item(feeds, follows[w2] | {w2, author})
    image = table.post_image(item["post_id"])
    assert image is not None
    (top, score), = cache.zrevrange(f"feed:{w2}", 0, 0, withscores=True)
    cache.zrem(f"feed:{w2}", top)
    stale = world.stores.format.member(post_from_image(image))
    cache.zadd(f"feed:{w2}", {stale: 1, json.dumps(json.loads(top)): score})
    cache.zadd(f"feed:{w3}", {json.dumps({"postId": f"junk{i}"}): i for i in range(101)})
    return injected | {(w1, "redis", "missing"), (w1, "redis", "missing_ttl"), (w2, "redis", "extra"),
                       (w2, "redis", "stale"), (w3, "redis", "over_long"), (w3, "redis", "extra")}


def foreign_item(feeds: dict[str, list[dict[str, Any]]], not_by: set[str]) -> dict[str, Any]:
    """A live item of someone else's feed, by an author outside ``not_by``."""
    return next(i for f in feeds.values() for i in f if i["author_id"] not in not_by)


def put_raw(world: World, user: str, item: dict[str, Any]) -> None:
    typed = {k: {"S": v} if isinstance(v, str) else {"BOOL": v} if isinstance(v, bool) else {"N": str(v)}
             for k, v in item.items()}
    typed.update(PK={"S": keys.feed_pk(user)}, GSI1PK={"S": keys.feed_gsi1pk(user)}, user_id={"S": user})
    world.dynamodb.put_item(TableName=TABLE, Item=typed)


def caches_canonical(world: World) -> bool:
    """Every warm cache holds exactly the canonical members of its durable feed's newest
    ``feed_max_length`` items, with a TTL."""
    for user in world.warm:
        items = world.stores.table.feed_items(user, limit=world.settings.feed_max_length)
        member = world.stores.format.member
        want = [member(post_from_image(world.stores.table.post_image(i["post_id"]) or {})) for i in items]
        have = [m.decode() for m in world.redis.zrevrange(f"feed:{user}", 0, -1)]
        if have != want or (want and world.redis.ttl(f"feed:{user}") <= 0):
            return False
    return True
