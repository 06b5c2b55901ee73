"""The global write budget: every worker's writes to the app's table together stay within
``FEEDPIPE_WRITE_BUDGET_WCU`` per second, so a celebrity's post never starves the app's own
writes on the same table.

Two parts:

- **Shared**: one sliding-window counter from ``limits`` (its Redis storage, whose Lua script
  charges a ``cost`` per hit and charges nothing for a refused one) in the app's Redis, under
  ``{prefix}write_budget``, which every worker process hits before each BatchWriteItem call.
- **Local** (AIMD): when DynamoDB throttles this process (``UnprocessedItems``, a throttling
  error) its share is halved, at most once a second since concurrent batches see the same
  throttle; it grows back by ``GROWTH_PER_SECOND`` of the budget each second. A share below 1
  charges more tokens per write (``cost / share``), so the process writes less of the budget.

A refused hit waits (a sleep sized to the tokens it asked for, never a spin) and tries again,
for at most ``max_wait_seconds``; then ``WriteBudgetError``, a transient error the task retries
with backoff, like a throttle. A budget of 0 builds no budget at all: no Redis call is made.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable

from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from feedpipe.adapters.redis_client import RedisClient
from feedpipe.config import WRITE_BUDGET_NEEDS_PLAIN_REDIS, ConfigError

log = logging.getLogger(__name__)

WCU_PER_FEED_WRITE = 2  # a feed item under 1 KB, written to the base table and projected into GSI1
CUT_FACTOR = 0.5
MIN_SHARE = 0.05
GROWTH_PER_SECOND = 0.05  # back from the floor to the whole budget in about 19 s
CUT_HOLDOFF_SECONDS = 1.0
MIN_POLL_SECONDS = 0.01
PIECES_PER_SECOND = 4  # a charge is taken in pieces of at most a quarter of the budget
BUDGET_SCOPE = "table"

Clock = Callable[[], float]
Hit = Callable[[int], bool]


class WriteBudgetError(Exception):
    """No write capacity came free within the wait bound; the task retries later (transient)."""


class Share:
    """This process's share of the budget, between ``MIN_SHARE`` and 1: cut multiplicatively on
    a throttle, grown back additively with time (AIMD)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._value = 1.0
        self._at = clock()
        self._cut_at = -math.inf
        self._lock = threading.Lock()

    def current(self) -> float:
        with self._lock:
            now = self._clock()
            self._value = min(1.0, self._value + GROWTH_PER_SECOND * max(0.0, now - self._at))
            self._at = now
            return self._value

    def cut(self) -> None:
        value = self.current()
        with self._lock:
            now = self._clock()
            if now - self._cut_at < CUT_HOLDOFF_SECONDS:
                return
            self._cut_at = now
            self._value = max(MIN_SHARE, value * CUT_FACTOR)
        log.info("write budget: throttled, this process's share cut to %.2f", self._value)


class WriteBudget:
    """Tokens (WCU) for the app's table, shared by every worker through ``hit``."""

    def __init__(
        self,
        hit: Hit,
        wcu_per_second: int,
        max_wait_seconds: float,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._hit = hit
        self.wcu_per_second = wcu_per_second
        self.max_wait_seconds = max_wait_seconds
        self.share = Share(clock)
        self._clock = clock
        self._sleep = sleep

    def acquire(self, writes: int) -> None:
        """Wait until ``writes`` feed writes fit in the budget; WriteBudgetError past the bound."""
        charge = math.ceil(writes * WCU_PER_FEED_WRITE / self.share.current())
        missed = take(self._hit, charge, self.wcu_per_second, self._clock() + self.max_wait_seconds, self._clock,
                      self._sleep)
        if missed:
            raise WriteBudgetError(f"no {missed} WCU of the {self.wcu_per_second}/s write budget within "
                                   f"{self.max_wait_seconds:g}s")

    def on_throttle(self) -> None:
        self.share.cut()


def take(hit: Hit, charge: int, per_second: float, deadline: float, clock: Clock,
         sleep: Callable[[float], None]) -> int:
    """Hit for ``charge`` tokens in pieces of at most a quarter of ``per_second`` (a hit above the
    limit never fits, and one near it fits only in an idle window: a process whose charge was
    multiplied by a cut share would starve beside busy peers), sleeping about the time a piece
    takes to come free (jittered, so waiters spread out) between tries. Returns 0 once all is
    taken, else the piece that did not fit before ``deadline``."""
    piece_limit = max(1, int(per_second) // PIECES_PER_SECOND)
    while charge > 0:
        piece = min(charge, piece_limit)
        while not hit(piece):
            pause = max(MIN_POLL_SECONDS, piece / per_second) * random.uniform(0.5, 1.0)
            if clock() + pause > deadline:
                return piece
            sleep(pause)
        charge -= piece
    return 0


def redis_hit(client: RedisClient, prefix: str, wcu_per_second: int) -> Hit:
    """A hit of the shared sliding-window counter in ``client``'s Redis, keys under ``prefix``."""
    limiter = redis_limiter(client, prefix, wcu_per_second)
    return lambda cost: limiter(BUDGET_SCOPE, cost)


def redis_limiter(client: RedisClient, prefix: str, per_second: int) -> Callable[[str, int], bool]:
    """Hits of ``per_second`` sliding-window counters in ``client``'s Redis, one per scope, keys
    under ``prefix``. Needs a plain Redis (its connection pool); the write budget is the one
    setting that asks for it on a cluster (the read pace is off there)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        raise ConfigError(WRITE_BUDGET_NEEDS_PLAIN_REDIS)
    storage = RedisStorage("redis://", connection_pool=pool, key_prefix=prefix)
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerSecond(per_second)

    def hit(scope: str, cost: int) -> bool:
        return limiter.hit(item, scope, cost=cost)

    return hit
