"""How long a planner's warm write takes in the million model's virtual time.

The writes go to a real Redis (the warm feeds are checked after the run), but a run's virtual
clock is not charged their real duration: on a shared machine that swings with whatever else
runs, and two runs meant to differ only in their write budget would differ by the machine's
load instead. Before the runs, ``calibrate`` times real warm writes of the fan-out's own shape
(one follower; a chunk of ``chunk`` followers, one in ``warm_every`` warm) and takes the medians.
Every run then charges each write ``per_call + per_follower x followers``: this machine's Redis
speed, the same in every run. The real time spent is still reported beside.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from bench._fanout_util import warm_up
from feedpipe.core import keys
from feedpipe.core.entries import CacheEntry
from feedpipe.feeds.stores import Stores

SAMPLES = 15


@dataclass(frozen=True)
class RedisTime:
    per_call: float
    per_follower: float

    def of(self, followers: int) -> float:
        return self.per_call + self.per_follower * followers


def calibrate(stores: Stores, redis_url: str, entry: CacheEntry, chunk: int, warm_every: int) -> RedisTime:
    """Median real times of warm writes to throwaway feeds (deleted after)."""
    users = [f"calibrate{i:05d}" for i in range(chunk)]
    client = redis.Redis.from_url(redis_url)
    warm_up(client, users[::warm_every])
    try:
        one = _median(lambda: stores.cache.add_to_warm_feeds(users[:1], entry))
        many = _median(lambda: stores.cache.add_to_warm_feeds(users, entry))
    finally:
        client.delete(*(keys.feed_cache(u) for u in users))
        client.close()
    return RedisTime(one, max(0.0, (many - one) / (chunk - 1)))


def _median(call: Callable[[], object]) -> float:
    times = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
