"""Capacity and latency of the DynamoDB model (``bench.dynamo_model``).

Capacity, as DynamoDB accounts it:
- a write costs 1 WCU per started KB of the item, on the base table and again on every GSI that
  holds the item (a feed item is in GSI1: 2 WCU); a read costs 1 RCU per started 4 KB, half
  when eventually consistent (GSI reads always are). A Query rounds the page's total size, a
  GetItem or BatchGetItem each item's, and a miss still costs the minimum.
- per partition: 1,000 WCU/s and 3,000 RCU/s; a key's partition is a hash of its partition
  key over ``partitions`` partitions (per table and per index). Per table: ``table_wcu`` and
  ``table_rcu`` per second, base table and its indexes together (the issue's accounting: an
  item's 2 WCU count against one table budget).
- each limit is a token bucket holding at most one second of its rate. A write needs its whole
  cost in every bucket it touches; a read is admitted while its buckets are not in debt and
  charged after (its size is known only once read), as DynamoDB does.
Not modelled: burst credit beyond one second, adaptive capacity and splits for heat, on-demand
scaling from the warm throughput, GSI back-pressure beyond the shared table budget.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096
PARTITION_WCU = 1000.0
PARTITION_RCU = 3000.0
Z99 = 2.326  # the standard normal's 99th percentile


@dataclass(frozen=True)
class Latency:
    """A lognormal call latency: ``median`` and ``p99`` seconds, plus ``per_mb`` seconds for each
    MB a call reads or writes."""

    median: float
    p99: float
    per_mb: float = 0.0

    def draw(self, rng: random.Random, megabytes: float = 0.0) -> float:
        sigma = math.log(self.p99 / self.median) / Z99 if self.p99 > self.median else 0.0
        return rng.lognormvariate(math.log(self.median), sigma) + self.per_mb * megabytes if self.median else 0.0


# Assumed in-region latencies (DynamoDB's single-digit milliseconds); configurable per run.
DEFAULT_LATENCY = {
    "GetItem": Latency(0.003, 0.010),
    "PutItem": Latency(0.005, 0.015),
    "DeleteItem": Latency(0.005, 0.015),
    "BatchGetItem": Latency(0.006, 0.020),
    "BatchWriteItem": Latency(0.008, 0.025),
    "Query": Latency(0.004, 0.012, per_mb=0.020),
}
ZERO_LATENCY = Latency(0.0, 0.0)


@dataclass(frozen=True)
class Limits:
    table_wcu: float = 40_000.0
    table_rcu: float = 40_000.0
    partitions: int = 0  # 0: as many as the table limits need at the partition limits

    @property
    def partition_count(self) -> int:
        return self.partitions or max(1, math.ceil(self.table_wcu / PARTITION_WCU),
                                      math.ceil(self.table_rcu / PARTITION_RCU))


class Bucket:
    """Tokens refilled at ``rate`` per second of the model's clock, at most one second's worth."""

    __slots__ = ("rate", "tokens", "at")

    def __init__(self, rate: float, now: float) -> None:
        self.rate, self.tokens, self.at = rate, rate, now

    def level(self, now: float) -> float:
        if now > self.at:
            self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
            self.at = now
        return self.tokens


@dataclass
class Usage:
    wcu: float = 0.0
    rcu: float = 0.0
    throttled: Counter[str] = field(default_factory=Counter)  # "Operation:reason" -> items or calls
    calls: Counter[str] = field(default_factory=Counter)


class Capacity:
    """The buckets of one table and its indexes, and what has been spent."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        self.usage = Usage()
        self._table = {"w": Bucket(limits.table_wcu, clock()), "r": Bucket(limits.table_rcu, clock())}
        self._partitions: dict[tuple[str, str, int], Bucket] = {}

    def _partition(self, kind: str, index: str, partition_key: str) -> Bucket:
        number = zlib.crc32(partition_key.encode()) % self.limits.partition_count
        bucket = self._partitions.get((kind, index, number))
        if bucket is None:
            rate = PARTITION_WCU if kind == "w" else PARTITION_RCU
            bucket = self._partitions[(kind, index, number)] = Bucket(rate, self.clock())
        return bucket

    def try_write(self, parts: list[tuple[str, str, float]]) -> str | None:
        """Spend a write's WCU on each (index, partition key, units) and on the table; returns
        None, or which limit refused it (nothing is spent then)."""
        now = self.clock()
        total = sum(units for _, _, units in parts)
        if self._table["w"].level(now) < total:
            return "table"
        buckets = [(self._partition("w", index, key), units) for index, key, units in parts]
        if any(bucket.level(now) < units for bucket, units in buckets):
            return "partition"
        for bucket, units in buckets:
            bucket.tokens -= units
        self._table["w"].tokens -= total
        self.usage.wcu += total
        return None

    def read_refused(self, index: str, partition_key: str) -> str | None:
        now = self.clock()
        if self._table["r"].level(now) <= 0:
            return "table"
        if self._partition("r", index, partition_key).level(now) <= 0:
            return "partition"
        return None

    def charge_read(self, index: str, partition_key: str, units: float) -> None:
        now = self.clock()
        self._table["r"].level(now)
        self._table["r"].tokens -= units
        self._partition("r", index, partition_key).tokens -= units
        self.usage.rcu += units


def write_units(size: int) -> float:
    return float(max(1, math.ceil(size / WRITE_UNIT_BYTES)))


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2
