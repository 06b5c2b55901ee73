"""Warm Redis feed updates per worker process, and Redis memory per cached feed member, on a
throwaway real ``redis-server``.

Updates: every warm user's ``feed:{user}`` already holds a full feed (``feed_max_length``
members, TTL set), so each update adds one member, trims one and refreshes the TTL, as in
production. Three ways, same users, same posts, one thread each, measured in the same run:

- feedpipe: ``FeedCache.add_to_warm_feeds`` (the ``ADD_IF_WARM`` Lua script, one pipeline per
  chunk of 1000 followers, as ``deliver_chunk`` calls it);
- the seed's ``CacheManager.addToFeed`` (baseline): ZADD, EXPIRE, ZREMRANGEBYRANK as three
  separate calls per follower;
- a bare redis-py pipeline of ZADD + ZREMRANGEBYRANK + EXPIRE per follower, no Lua and no
  warm check (``extra``: what plain pipelining gives; three commands to pack and parse per
  follower against the script's one, so it is not an upper bound for feedpipe).

Memory: ``MEMORY USAGE`` (all elements sampled) of many full feeds written with the full
member format against the same feeds with the compact one. Ids here are short (``u_000123``),
so a compact member fits Redis's listpack limit (64 bytes); ``extra`` also gives compact
members with 36-character (UUID) user ids, which do not.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from bench._util import local_redis, make_post, user_id
from bench.figures import Figure
from feedpipe.adapters.redis_feeds import FeedCache, connect_redis
from feedpipe.core import keys
from feedpipe.core.entries import CacheEntry
from feedpipe.core.events import Post
from feedpipe.core.members import MemberFormat, encode_member
from feedpipe.core.planning import chunked

MAX_LENGTH = 100  # feed_max_length's default, and the seed's "latest 100 posts"
TTL = 3600
CHUNK = 1000  # fanout_chunk_size's default: followers per add_to_warm_feeds call
TARGET_RATE = 50_000
AUTHORS = 500


def _post(n: int, long_ids: bool = False) -> Post:
    author = user_id(n % AUTHORS)
    return make_post(n, author=str(uuid.UUID(int=n % AUTHORS + 1)) if long_ids else author)


def prefill(client: Any, users: list[str]) -> None:
    """Give every user a full, warm feed of older compact members."""
    old = [_post(-1_000_000 + i) for i in range(MAX_LENGTH)]
    entries = {encode_member(p, MemberFormat.COMPACT): p.created_at_ms for p in old}
    for chunk in chunked(users, 200):
        pipe = client.pipeline(transaction=False)
        for user in chunk:
            pipe.zadd(keys.feed_cache(user), entries)
            pipe.expire(keys.feed_cache(user), TTL)
        pipe.execute()


def feedpipe_updates(cache: FeedCache, users: list[str], posts: list[Post]) -> int:
    warm = 0
    for post in posts:
        entry = CacheEntry(post.created_at_ms, encode_member(post, MemberFormat.FULL))
        for chunk in chunked(users, CHUNK):
            warm += cache.add_to_warm_feeds(chunk, entry)
    return warm


def seed_updates(client: Any, users: list[str], posts: list[Post]) -> int:
    """``CacheManager.addToFeed`` per follower: three calls, three round trips."""
    for post in posts:
        member = encode_member(post, MemberFormat.FULL)
        for user in users:
            key = keys.feed_cache(user)
            client.zadd(key, {member: post.created_at_ms})
            client.expire(key, TTL)
            client.zremrangebyrank(key, 0, -MAX_LENGTH - 1)
    return len(users) * len(posts)


def bare_pipeline_updates(client: Any, users: list[str], posts: list[Post]) -> int:
    for post in posts:
        member = encode_member(post, MemberFormat.FULL)
        for chunk in chunked(users, CHUNK):
            pipe = client.pipeline(transaction=False)
            for user in chunk:
                key = keys.feed_cache(user)
                pipe.zadd(key, {member: post.created_at_ms})
                pipe.zremrangebyrank(key, 0, -MAX_LENGTH - 1)
                pipe.expire(key, TTL)
            pipe.execute()
    return len(users) * len(posts)


def _timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, fn's result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def measure_updates(client: Any, n_users: int, posts_each: int, seed_posts: int, rounds: int) -> dict[str, Any]:
    users = [user_id(i) for i in range(n_users)]
    prefill(client, users)
    cache = FeedCache(client, MAX_LENGTH, TTL)
    next_post = iter(range(1, 10**9))

    def posts(count: int) -> list[Post]:
        return [_post(next(next_post)) for _ in range(count)]

    paths: dict[str, tuple[Callable[[list[Post]], int], int]] = {
        "feedpipe": (lambda ps: feedpipe_updates(cache, users, ps), posts_each),
        "seed": (lambda ps: seed_updates(client, users, ps), seed_posts),
        "bare_pipeline": (lambda ps: bare_pipeline_updates(client, users, ps), posts_each),
    }
    for fn, _ in paths.values():  # warm-up: script loaded, connections open, feeds converted
        fn(posts(1))
    best: dict[str, dict[str, float]] = {}
    all_warm = True
    for _ in range(rounds):  # interleaved: drift on the shared machine hits every path alike
        for name, (fn, count) in paths.items():
            batch = posts(count)
            wall, cpu, done = _timed(lambda fn=fn, batch=batch: fn(batch))
            updates = n_users * count
            all_warm &= done == updates
            rate = updates / wall
            if name not in best or rate > best[name]["rate"]:
                best[name] = {"rate": rate, "cpu_us": cpu / updates * 1e6, "updates": updates}
    lengths = {int(client.zcard(keys.feed_cache(u))) for u in users[:50]}
    ttl_ok = all(0 < int(client.ttl(keys.feed_cache(u))) <= TTL for u in users[:50])
    return {**best, "all_warm": all_warm, "lengths": sorted(lengths), "ttl_ok": ttl_ok}


def measure_memory(client: Any, n_feeds: int) -> dict[str, Any]:
    """Average MEMORY USAGE per member over ``n_feeds`` full feeds, per member format."""
    result: dict[str, Any] = {}
    for fmt, long_ids in ((MemberFormat.FULL, False), (MemberFormat.COMPACT, False), (MemberFormat.COMPACT, True)):
        total = members = 0
        encodings: set[str] = set()
        lengths: list[int] = []
        for f in range(n_feeds):
            key = f"bench:mem:{fmt.value}:{f}"
            feed = [_post(f * 7 + i, long_ids) for i in range(MAX_LENGTH)]  # different posts per feed
            encoded = {encode_member(p, fmt): p.created_at_ms for p in feed}
            lengths.extend(len(m.encode()) for m in encoded)
            client.zadd(key, encoded)
            total += int(client.memory_usage(key, samples=0))
            members += int(client.zcard(key))
            encodings.add(client.object("encoding", key).decode())
            client.delete(key)
        result[f"{fmt.value}_uuid_ids" if long_ids else fmt.value] = {
            "bytes_per_member": total / members,
            "encoding": sorted(encodings),
            "member_bytes_max": max(lengths),
            "member_bytes_mean": sum(lengths) / len(lengths),
        }
    return result


def run(short: bool) -> list[Figure]:
    n_users, posts_each, seed_posts, rounds, n_feeds = (
        (500, 3, 1, 2, 50) if short else (5_000, 10, 1, 3, 400)
    )
    with local_redis() as server:
        client = connect_redis(server.url)
        try:
            up = measure_updates(client, n_users, posts_each, seed_posts, rounds)
            client.flushdb()
            mem = measure_memory(client, n_feeds)
            listpack_value = client.config_get("zset-max-listpack-value")
        finally:
            client.close()
    ours, seed, bare = up["feedpipe"], up["seed"], up["bare_pipeline"]
    full, compact = mem["full"], mem["compact"]
    saving = 1 - compact["bytes_per_member"] / full["bytes_per_member"]
    return [
        Figure(
            name="warm Redis feed updates per worker process",
            value=round(ours["rate"]),
            unit="updates/s",
            baseline_name="seed addToFeed: ZADD, EXPIRE, ZREMRANGEBYRANK calls",
            baseline=round(seed["rate"]),
            better="higher",
            target=f">= {TARGET_RATE:,} conditional ZADD + trim + TTL per second per process",
            met=ours["rate"] >= TARGET_RATE,
            notes=(
                f"real redis-server on this host, one client thread; {n_users:,} warm full feeds "
                f"({MAX_LENGTH} members), chunks of {CHUNK}; best of {rounds} interleaved rounds"
            ),
            extra={
                "bare_pipeline_zadd_trim_expire_no_lua_per_s": round(bare["rate"]),
                "feedpipe_over_bare_pipeline": round(ours["rate"] / bare["rate"], 2),
                "client_cpu_us_per_update": {
                    "feedpipe": round(ours["cpu_us"], 1),
                    "seed": round(seed["cpu_us"], 1),
                    "bare_pipeline": round(bare["cpu_us"], 1),
                },
                "updates_timed": {k: int(v["updates"]) for k, v in (("feedpipe", ours), ("seed", seed),
                                                                     ("bare_pipeline", bare))},
                "every_feed_warm_and_written": up["all_warm"],
                "feed_lengths_after": up["lengths"],
                "ttl_refreshed": up["ttl_ok"],
            },
        ),
        Figure(
            name="Redis memory per cached feed member",
            value=round(compact["bytes_per_member"], 1),
            unit="bytes/member",
            baseline_name="full member format",
            baseline=round(full["bytes_per_member"], 1),
            better="lower",
            target="compact members cost less memory than full ones",
            met=compact["bytes_per_member"] < full["bytes_per_member"],
            notes=(
                f"MEMORY USAGE (SAMPLES 0) over {n_feeds} feeds of {MAX_LENGTH} members each, "
                f"per format; saving {saving:.0%}"
            ),
            extra={
                "saving_percent": round(saving * 100, 1),
                "saving_percent_uuid_ids": round(
                    (1 - mem["compact_uuid_ids"]["bytes_per_member"] / full["bytes_per_member"]) * 100, 1
                ),
                "full": full,
                "compact": compact,
                "compact_uuid_ids": mem["compact_uuid_ids"],
                "zset_max_listpack_value": listpack_value.get("zset-max-listpack-value"),
            },
        ),
    ]
