"""The write budget and the app's own writes, in the DynamoDB model's virtual time.

``virtual_budget`` gives every simulated worker process a ``WriteBudget`` (feedpipe's real
policy: the shared charge, the bounded sleeping wait, the AIMD share) over one token bucket on
the virtual clock, as the fleet would share one counter in Redis. (The production counter is
``limits``' Lua script in Redis, which keeps Redis's real time; the tests run that one.)

``AppWriter`` is the app: a simulated thread that writes its own items (1 WCU each: no GSI
keys) in batches of 25 at ``wcu`` per second until told to stop, and counts the writes DynamoDB
refused it (unprocessed items, and items of batches that failed throttled), one attempt a call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from bench.dynamo_capacity import Bucket
from bench.figures import Figure
from bench.virtual_clock import VirtualClock
from feedpipe.adapters.aws_errors import is_throttling
from feedpipe.adapters.read_pace import ReadPace
from feedpipe.adapters.write_budget import WriteBudget
from feedpipe.feeds.stores import Stores

APP_BATCH = 25
WCU_PER_ITEM = 2  # a feed item: base table + GSI1


def virtual_budget(clock: VirtualClock, fleet: list[Stores], wcu_per_second: int, max_wait_seconds: float) -> None:
    hit = _virtual_limiter(clock, wcu_per_second)
    for stores in fleet:
        stores.table.budget = WriteBudget(lambda cost: hit("table", cost), wcu_per_second, max_wait_seconds,  # type: ignore[attr-defined]
                                          clock=clock.now, sleep=clock.sleep)


def virtual_read_pace(clock: VirtualClock, fleet: list[Stores], rcu_per_second: int, max_wait_seconds: float) -> None:
    """The follower walks' read pace (feedpipe's ``ReadPace``) over one bucket per partition key on
    the virtual clock, as the fleet would share a counter per author in Redis."""
    hit = _virtual_limiter(clock, rcu_per_second)
    for stores in fleet:
        stores.table.read_pace = ReadPace(hit, rcu_per_second, max_wait_seconds, clock=clock.now, sleep=clock.sleep)  # type: ignore[attr-defined]


def _virtual_limiter(clock: VirtualClock, per_second: int) -> Callable[[str, int], bool]:
    """Hits of ``per_second`` token buckets on the virtual clock, one per scope: the model's stand-in
    for ``write_budget.redis_limiter``."""
    buckets: dict[str, Bucket] = {}

    def hit(scope: str, cost: int) -> bool:
        bucket = buckets.setdefault(scope, Bucket(per_second, clock.now()))
        if bucket.level(clock.now()) < cost:
            return False
        bucket.tokens -= cost
        return True

    return hit


def app_client() -> Any:
    """The app's client: one attempt a call, so every throttle it meets is counted."""
    config = Config(retries={"mode": "standard", "max_attempts": 1}, parameter_validation=False)
    return boto3.session.Session().client("dynamodb", config=config)


@dataclass
class AppWriter:
    clock: VirtualClock
    client: Any
    table: str
    wcu: float
    written: int = 0
    throttled: int = 0
    done: Callable[[], bool] = field(default=lambda: True)

    def run(self) -> None:
        interval, n = APP_BATCH / self.wcu, 0
        while not self.done():
            started = self.clock.now()
            batch = [{"PutRequest": {"Item": {"PK": {"S": f"APP#{n + i}"}, "SK": {"S": "PROFILE"},
                                              "bio": {"S": "the app's own write"}}}} for i in range(APP_BATCH)]
            n += APP_BATCH
            try:
                response = self.client.batch_write_item(RequestItems={self.table: batch})
                refused = len((response.get("UnprocessedItems") or {}).get(self.table, []))
            except ClientError as exc:
                if not is_throttling(exc):
                    raise
                refused = APP_BATCH
            self.throttled += refused
            self.written += APP_BATCH - refused
            self.clock.sleep(max(0.0, interval - (self.clock.now() - started)))


def budget_figures(size: Any, unbudgeted: dict[str, Any], budgeted: dict[str, Any]) -> list[Figure]:
    n, budget = budgeted["followers"], budgeted["budget_wcu"]
    floor = max(0, n * WCU_PER_ITEM - budget) / budget  # the budget's bucket, too, starts with a second's worth
    setting = (f"{n:,} followers, table limit {size.table_wcu:,.0f} WCU/s, the app writing "
               f"{budgeted['app_wcu']:,.0f} WCU/s of its own (1 WCU items, batches of 25, one attempt each), "
               f"write budget {budget:,} WCU/s; {budgeted['slots']} task slots; virtual time")
    tried = (r["app_written"] + r["app_throttled"] for r in (unbudgeted, budgeted))
    print(f"   million: app throttled: {unbudgeted['app_throttled']:,} of {next(tried):,} without a budget, "
          f"{budgeted['app_throttled']:,} of {next(tried):,} with; durable {unbudgeted['durable_seconds']:.1f}s / "
          f"{budgeted['durable_seconds']:.1f}s", file=sys.stderr, flush=True)
    name = f"write budget: {n:,}-follower post beside the app's writes"
    return [
        Figure(f"{name}, app writes throttled (vs no budget)", budgeted["app_throttled"], "items",
               "no write budget", unbudgeted["app_throttled"], better="lower",
               target="no throttle of the app's writes caused by the fan-out", met=budgeted["app_throttled"] == 0,
               notes=f"{setting}; app wrote {budgeted['app_written']:,} items with, "
                     f"{unbudgeted['app_written']:,} without", extra={"budgeted": budgeted, "unbudgeted": unbudgeted}),
        Figure(f"{name}, every durable feed (vs budget floor)", round(budgeted["durable_seconds"], 2), "s",
               "(followers x 2 WCU - 1 s burst) / budget", round(floor, 2), better="lower",
               target="<= 1.15 x the budget floor",
               met=budgeted["durable_items"] == n and budgeted["durable_seconds"] <= 1.15 * floor,
               notes=f"{setting}; {unbudgeted['durable_seconds']:.1f}s without the budget"),
    ]
