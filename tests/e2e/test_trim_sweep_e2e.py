"""The cache sweep on a real Redis at scale: every feed ends capped at its newest members, and a
reader the app would be serving meanwhile never waits long (the sweep never blocks Redis)."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
import redis

from feedpipe.adapters.redis_feeds import FeedCache
from feedpipe.core import keys
from feedpipe.feeds.trimming import SweepStats, sweep_cached_feeds

pytestmark = pytest.mark.e2e

FEEDS = 50_000
LONG_EVERY = 10  # every 10th feed is over the cap
LONG_SIZE = 150
MAX_LENGTH = 100
BASE_MS = 1_705_314_600_000
WORST_CALL_SECONDS = 0.25
PIPELINE_FEEDS = 2_000


def _user(n: int) -> str:
    return f"u{n}"


def _feed_size(n: int, rng: random.Random) -> int:
    return LONG_SIZE if n % LONG_EVERY == 0 else rng.randint(5, 20)


def _member(n: int, i: int) -> str:
    return json.dumps({"postId": f"{n}-{i}"}, separators=(",", ":"))


def _build_feeds(client: redis.Redis) -> dict[int, int]:
    """Every feed's size, written as one ZADD per feed in big unordered pipelines."""
    rng = random.Random(7)
    sizes = {n: _feed_size(n, rng) for n in range(FEEDS)}
    pipe = client.pipeline(transaction=False)
    for n, size in sizes.items():
        pipe.zadd(keys.feed_cache(_user(n)), {_member(n, i): BASE_MS + i for i in range(size)})
        if len(pipe) >= PIPELINE_FEEDS:
            pipe.execute()
    pipe.execute()
    return sizes


def _all_cards(client: redis.Redis) -> dict[bytes, int]:
    """Every feed's size, read with SCAN and pipelined ZCARD (never KEYS)."""
    cards: dict[bytes, int] = {}
    for batch in _scan_batches(client):
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.zcard(key)
        cards.update(zip(batch, pipe.execute(), strict=True))
    return cards


def _scan_batches(client: redis.Redis) -> list[list[bytes]]:
    batches, cursor = [], 0
    while True:
        cursor, found = client.scan(cursor, match=keys.FEED_CACHE_PREFIX + "*", count=1000)
        batches.append(found)
        if cursor == 0:
            return batches


def _read_while(client: redis.Redis, key: str, busy: threading.Thread) -> tuple[list[float], set[tuple[bytes, ...]]]:
    """The app's getFeed page, over and over until ``busy`` ends: latencies and pages seen."""
    latencies: list[float] = []
    pages: set[tuple[bytes, ...]] = set()
    while busy.is_alive() or not latencies:
        started = time.perf_counter()
        page = client.zrevrange(key, 0, 19)
        latencies.append(time.perf_counter() - started)
        pages.add(tuple(page))
    return latencies, pages


def _assert_all_capped(client: redis.Redis, sizes: dict[int, int]) -> list[int]:
    """Every feed at or under the cap, long ones holding exactly their newest; returns the long ones."""
    over = [n for n, size in sizes.items() if size > MAX_LENGTH]
    cards = _all_cards(client)
    assert len(cards) == FEEDS
    assert max(cards.values()) <= MAX_LENGTH
    assert all(cards[keys.feed_cache(_user(n)).encode()] == min(size, MAX_LENGTH) for n, size in sizes.items())
    for n in over[:: len(over) // 7]:
        kept = client.zrange(keys.feed_cache(_user(n)), 0, -1, withscores=True)
        assert kept == [(_member(n, i).encode(), float(BASE_MS + i)) for i in range(LONG_SIZE - MAX_LENGTH, LONG_SIZE)]
    return over


def test_sweep_caps_50k_feeds_without_ever_blocking_a_reader(real_redis, redis_urls):
    started = time.perf_counter()
    sizes = _build_feeds(real_redis)
    built = time.perf_counter() - started
    watched = keys.feed_cache(_user(0))  # a long feed, trimmed while it is being read
    reader = redis.Redis.from_url(redis_urls[0])
    result: list[SweepStats] = []
    cache = FeedCache(real_redis, MAX_LENGTH, ttl_seconds=3600)
    sweeper = threading.Thread(target=lambda: result.append(sweep_cached_feeds(cache, MAX_LENGTH)))

    sweeper.start()
    latencies, pages = _read_while(reader, watched, sweeper)
    sweeper.join()
    reader.close()
    stats = result[0]
    swept = time.perf_counter() - started - built

    over = _assert_all_capped(real_redis, sizes)
    assert stats.keys_trimmed == len(over)
    assert stats.members_removed == len(over) * (LONG_SIZE - MAX_LENGTH)
    assert stats.keys_seen >= FEEDS
    assert pages == {tuple(_member(0, i).encode() for i in reversed(range(LONG_SIZE - 20, LONG_SIZE)))}
    print(
        f"built {FEEDS} feeds in {built:.2f}s, swept in {swept:.2f}s over {stats.slices} slices; "
        f"slowest sweep call {stats.slowest_call_seconds * 1000:.1f} ms; reader {len(latencies)} reads, "
        f"worst {max(latencies) * 1000:.1f} ms"
    )
    assert stats.slowest_call_seconds < WORST_CALL_SECONDS
    assert max(latencies) < WORST_CALL_SECONDS
