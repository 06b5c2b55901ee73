"""The follower walk's read pace: every walker of one author's followers, in every worker
process, together reads at most ``FEEDPIPE_FOLLOWER_READ_RCU`` per second from the author's
GSI1 partition.

Every follow edge of an author has the same GSI1 partition key, so a walk, however many planners
split it, reads from one partition, which serves 3,000 RCU/s. Sixteen walkers reading at will
overrun it: their Queries are throttled, botocore backs them off with jittered exponential
sleeps, and one unlucky walker's run of backoffs decides when the last warm feed gets the post.
Paced, the walkers share the partition's rate and none is throttled; the default leaves a fifth
of it to the app's own reads of that partition (the author's posts, newest first).

A read's size is known only once it is read (DynamoDB charges after a read too): each page's
``ConsumedCapacity`` is charged to a ``limits`` sliding-window counter per author in the app's
Redis, and a page with more after it is handed on only once its charge fits, so the walker's next
read waits for the pace. A walk's last page (and the one-item probe that finds where to split a
walk) is charged only as far as the window has room, and handed on at once: no read follows it
to pace, and the post's last warm feeds should not wait on one. A wait is bounded by
``max_wait_seconds`` a charge; past it, or when the Redis counter cannot be reached, the walk goes
on unpaced (DynamoDB's throttling, retried by botocore, is then the pace): pacing only spreads
reads, it never fails a walk, and a cache Redis that is down leaves retractions to the durable
feeds as before.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from limits.errors import StorageError
from redis import RedisError

from feedpipe.adapters.write_budget import take

log = logging.getLogger(__name__)

UNREACHABLE = (RedisError, StorageError, OSError)

Clock = Callable[[], float]
KeyedHit = Callable[[str, int], bool]


class ReadPace:
    """Read units per second per partition key, shared by every walker through ``hit``."""

    def __init__(
        self,
        hit: KeyedHit,
        rcu_per_second: int,
        max_wait_seconds: float,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._hit = hit
        self.rcu_per_second = rcu_per_second
        self.max_wait_seconds = max_wait_seconds
        self._clock = clock
        self._sleep = sleep

    def spent(self, partition_key: str, units: float, wait: bool = True) -> None:
        """Charge ``units`` read from ``partition_key``'s partition; returns once they fit in its
        rate (or the wait bound has passed). Without ``wait``, charges what fits now and returns."""
        deadline = self._clock() + (self.max_wait_seconds if wait else 0.0)
        try:
            missed = take(lambda cost: self._hit(partition_key, cost), math.ceil(units), self.rcu_per_second,
                          deadline, self._clock, self._sleep)
            if missed and wait:
                log.info("follower reads of %s: no %d RCU of the %d/s pace within %gs; reading on unpaced",
                         partition_key, missed, self.rcu_per_second, self.max_wait_seconds)
        except UNREACHABLE as exc:
            log.warning("follower reads of %s: the read pace's Redis answered %s; reading on unpaced",
                        partition_key, type(exc).__name__)


def consumed_units(response: dict[str, object]) -> float:
    """The read units a response says it consumed (asked with ``ReturnConsumedCapacity``); 0
    when it says nothing."""
    consumed = response.get("ConsumedCapacity")
    units = consumed.get("CapacityUnits") if isinstance(consumed, dict) else None
    return float(units) if isinstance(units, int | float) else 0.0
