"""The global write budget (issue 15, part 3): writers sharing one budget in Redis stay within it,
throttles cut a process's share and time grows it back, a budget of 0 touches no Redis, and a bad
setting is one clear error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import fakeredis
import pytest
from botocore.exceptions import ClientError

from feedpipe.adapters.dynamo import FeedTable
from feedpipe.adapters.write_budget import (
    CUT_HOLDOFF_SECONDS,
    GROWTH_PER_SECOND,
    MIN_SHARE,
    WCU_PER_FEED_WRITE,
    Share,
    WriteBudget,
    WriteBudgetError,
    redis_hit,
)
from feedpipe.config import ConfigError, load_settings
from feedpipe.core.keys import OwnKeys
from feedpipe.services import build_write_budget
from tests.adapters.clocks import FakeClock

TABLE = "SocialMediaApp"


class StubDynamo:
    """BatchWriteItem that writes everything (counting it), or answers as told."""

    def __init__(self, answers: list[Any] | None = None) -> None:
        self.answers = list(answers or [])
        self.written = 0
        self.calls = 0
        self._lock = threading.Lock()

    def batch_write_item(self, RequestItems: dict[str, list[Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        with self._lock:
            self.calls += 1
            answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        if answer is not None:
            return answer
        with self._lock:
            self.written += len(RequestItems[TABLE])
        return {}


def items(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"PK": {"S": f"FEED#u{i}"}, "SK": {"S": "1#p"}} for i in range(start, start + n)]


def throttled() -> ClientError:
    return ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "BatchWriteItem")


# -- (1) many writers, one budget -------------------------------------------------------------


def test_writers_sharing_one_budget_stay_within_it_together(redis_clients: Callable[[], Any]) -> None:
    """Four writers, each with its own client and budget object as separate worker processes
    would have, share one counter in Redis: together they write no more than the budget allows."""
    budget_wcu, seconds, writers = 400, 1.5, 4
    dynamo = StubDynamo()
    stop = time.monotonic() + seconds

    def writer(index: int) -> None:
        hit = redis_hit(redis_clients(), OwnKeys().write_budget, budget_wcu)
        table = FeedTable(dynamo, TABLE, write_concurrency=1)
        table.budget = WriteBudget(hit, budget_wcu, max_wait_seconds=5)
        n = 0
        while time.monotonic() < stop:
            table.put_items(items(10, start=index * 1_000_000 + n))
            n += 10

    started = time.monotonic()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.monotonic() - started
    spent = dynamo.written * WCU_PER_FEED_WRITE
    # A sliding window lets at most one window's worth in at the start, then the rate.
    assert spent <= budget_wcu * (elapsed + 1), (spent, elapsed)
    assert spent >= budget_wcu / 2  # and the writers were not simply stalled
    names = redis_clients().keys("*")
    assert names and all(k.startswith(b"feedpipe:write_budget:") for k in names)


def test_a_wait_is_bounded_and_sleeps_instead_of_spinning() -> None:
    clock = FakeClock()
    budget = WriteBudget(lambda cost: False, 100, max_wait_seconds=2.0, clock=clock, sleep=clock.sleep)
    with pytest.raises(WriteBudgetError, match="write budget"):
        budget.acquire(25)
    assert clock.now - 1000.0 <= 2.0


def test_a_write_bigger_than_the_budget_is_charged_in_pieces_that_fit() -> None:
    costs: list[int] = []
    budget = WriteBudget(lambda cost: costs.append(cost) or True, 40, max_wait_seconds=1)
    budget.acquire(25)  # 50 WCU against 40 a second
    assert costs == [10, 10, 10, 10, 10]


def test_a_process_whose_share_was_cut_is_not_starved_by_busy_peers() -> None:
    """Regression: a cut share multiplies the charge, and a piece as big as the whole budget
    fits only in an idle window, which peers using 60% of it never leave."""
    clock = FakeClock()
    limit, peers = 400, 240

    def hit(cost: int) -> bool:  # a window the peers keep 60% full
        return peers + cost <= limit

    budget = WriteBudget(hit, limit, max_wait_seconds=5, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        budget.on_throttle()
        clock.sleep(CUT_HOLDOFF_SECONDS)
    budget.acquire(25)  # charged at least 50 WCU x the cut


# -- (2) throttles cut the rate, time grows it back -------------------------------------------


def test_a_throttle_halves_the_share_once_per_holdoff_and_time_grows_it_back() -> None:
    clock = FakeClock()
    share = Share(clock)
    share.cut()
    share.cut()  # the same throttle seen by a concurrent batch
    assert share.current() == pytest.approx(0.5)
    clock.sleep(CUT_HOLDOFF_SECONDS)
    share.cut()  # a second later: what a second grew back, halved
    assert share.current() == pytest.approx((0.5 + GROWTH_PER_SECOND) / 2)
    clock.sleep(10)
    assert share.current() == pytest.approx((0.5 + GROWTH_PER_SECOND) / 2 + 10 * GROWTH_PER_SECOND)
    clock.sleep(100)
    assert share.current() == 1.0
    for _ in range(20):
        clock.sleep(CUT_HOLDOFF_SECONDS)
        share.cut()
    assert share.current() == pytest.approx(MIN_SHARE, abs=0.01)


def test_throttles_seen_by_the_table_cut_the_writes_per_token_and_recovery_restores_them() -> None:
    """Against a fixed token rate (a fake counter refilled each fake second), a throttled
    process gets fewer writes through per second, and as many as before once it has recovered."""
    clock = FakeClock()
    rate = 1000
    window = {"second": int(clock()), "used": 0}

    def hit(cost: int) -> bool:
        if int(clock()) != window["second"]:
            window.update(second=int(clock()), used=0)
        if window["used"] + cost > rate:
            return False
        window["used"] += cost
        return True

    dynamo = StubDynamo()
    table = FeedTable(dynamo, TABLE, write_concurrency=1)
    table.budget = WriteBudget(hit, rate, max_wait_seconds=5, clock=clock, sleep=clock.sleep)

    def writes_in_one_second() -> int:
        before, end = dynamo.written, int(clock()) + 1
        for _ in range(rate):  # without a budget the fake clock never moves: stop anyway
            if int(clock()) >= end:
                break
            table.put_items(items(25))
        return dynamo.written - before

    full = writes_in_one_second()
    dynamo.answers = [{"UnprocessedItems": {TABLE: items(5)}}]  # DynamoDB left some unprocessed
    with mock.patch("feedpipe.adapters.dynamo.full_jitter", return_value=0.0):
        table.put_items(items(25))
    assert table.budget.share.current() < 0.6
    cut = writes_in_one_second()
    clock.sleep(CUT_HOLDOFF_SECONDS)
    dynamo.answers = [throttled()]
    with pytest.raises(ClientError):
        table.write_group([{"PutRequest": {"Item": i}} for i in items(25)])
    assert table.budget.share.current() < 0.35
    clock.sleep(1 / GROWTH_PER_SECOND)
    recovered = writes_in_one_second()
    per_second = rate // WCU_PER_FEED_WRITE  # (a measured second ends with one batch begun in it)
    assert per_second <= full <= per_second + 25
    assert cut <= per_second * 0.6 + 25
    assert per_second <= recovered <= per_second + 25


# -- (3) off by default: no Redis, behaviour unchanged ---------------------------------------


def test_budget_off_builds_nothing_and_makes_no_redis_call() -> None:
    redis = mock.Mock()
    assert load_settings({}).write_budget_wcu == 0
    assert build_write_budget(load_settings({}), redis, OwnKeys()) is None
    assert redis.mock_calls == []
    dynamo = StubDynamo()
    table = FeedTable(dynamo, TABLE, write_concurrency=1)
    assert table.put_items(items(60)) == 60
    assert (dynamo.calls, dynamo.written) == (3, 60)


def test_budget_on_lives_in_the_apps_redis_under_feedpipes_prefix() -> None:
    client = fakeredis.FakeRedis()
    settings = load_settings({"FEEDPIPE_WRITE_BUDGET_WCU": "100", "FEEDPIPE_KEY_PREFIX": "fp1:"})
    budget = build_write_budget(settings, client, OwnKeys(settings.key_prefix))
    assert budget is not None and budget.max_wait_seconds == settings.task_budget_seconds / 2
    budget.acquire(10)
    assert [k.startswith(b"fp1:write_budget:") for k in client.keys("*")] == [True]


# -- (4) a bad setting is one clear error -----------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "lots"])
def test_a_bad_budget_is_one_clear_error(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"FEEDPIPE_WRITE_BUDGET_WCU": value})
    message = str(caught.value)
    assert "FEEDPIPE_WRITE_BUDGET_WCU" in message and "\n" not in message


def test_a_budget_on_a_redis_cluster_is_refused_clearly() -> None:
    cluster = mock.Mock(spec=["execute_command"])
    with pytest.raises(ConfigError, match="FEEDPIPE_WRITE_BUDGET_WCU"):
        redis_hit(cluster, OwnKeys().write_budget, 100)


def test_a_budget_with_a_redis_cluster_stops_the_process_at_start() -> None:
    """Not at the first write, inside a task, where a ConfigError is retried for ever."""
    from feedpipe.adapters.redis_client import check_redis
    from feedpipe.config import ConfigError, RedisClusterMode, load_settings

    with pytest.raises(ConfigError, match="FEEDPIPE_WRITE_BUDGET_WCU needs a plain Redis"):
        load_settings({"FEEDPIPE_WRITE_BUDGET_WCU": "1000", "FEEDPIPE_REDIS_CLUSTER": "on",
                       "FEEDPIPE_BROKER_URL": "redis://127.0.0.1:1/0"})
    found_cluster = load_settings({"FEEDPIPE_WRITE_BUDGET_WCU": "1000", "FEEDPIPE_BROKER_URL": "redis://127.0.0.1:1/0"})
    as_a_cluster = lambda name, url, settings: settings.model_copy(update={"redis_cluster": RedisClusterMode.ON})  # noqa: E731
    with (mock.patch("feedpipe.adapters.redis_client._log_in", as_a_cluster),
          pytest.raises(ConfigError, match="FEEDPIPE_WRITE_BUDGET_WCU needs a plain Redis")):
        check_redis(found_cluster)
