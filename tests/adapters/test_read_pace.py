"""The follower walks' read pace (issue 15): walkers of one author, each with its own client and
pace as separate worker processes would have, read from the author's GSI1 partition no faster
together than the pace; other authors are paced apart; a wait is bounded and never fails a walk;
a pace of 0, or a Redis Cluster, builds none."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
import redis

from feedpipe.adapters.dynamo import FeedTable
from feedpipe.adapters.read_pace import ReadPace, consumed_units
from feedpipe.adapters.write_budget import redis_limiter
from feedpipe.config import ConfigError, load_settings
from feedpipe.core import keys
from feedpipe.core.keys import OwnKeys
from feedpipe.services import build_read_pace, build_stores
from tests.adapters.clocks import FakeClock

TABLE = "SocialMediaApp"
PAGE_RCU = 40.0


class PagedFollowers:
    """GSI1 Query of an author's followers in pages of ``per_page``, each saying it consumed
    ``PAGE_RCU`` when asked; records what it was asked and read, per author."""

    def __init__(self, followers: int, per_page: int = 10) -> None:
        self.followers, self.per_page = followers, per_page
        self.requests: list[dict[str, Any]] = []
        self.read: dict[str, float] = {}
        self._lock = threading.Lock()

    def query(self, **request: Any) -> dict[str, Any]:
        author = request["ExpressionAttributeValues"][":pk"]["S"]
        start = int(request.get("ExclusiveStartKey", {}).get("n", {}).get("N", "0"))
        end = min(start + self.per_page, self.followers)
        with self._lock:
            self.requests.append(request)
            self.read[author] = self.read.get(author, 0.0) + PAGE_RCU
        response: dict[str, Any] = {
            "Items": [{"GSI1SK": {"S": f"{keys.FOLLOWER_PREFIX}f{i:06d}"}} for i in range(start, end)]}
        if request.get("ReturnConsumedCapacity") == "TOTAL":
            response["ConsumedCapacity"] = {"TableName": TABLE, "CapacityUnits": PAGE_RCU}
        if end < self.followers:
            response["LastEvaluatedKey"] = {"n": {"N": str(end)}}
        return response


def test_walkers_of_one_author_read_within_the_pace_together_and_other_authors_apart(
    redis_clients: Callable[[], Any],
) -> None:
    rcu, seconds = 400, 1.5
    dynamo = PagedFollowers(followers=1_000_000)
    stop = time.monotonic() + seconds

    def walker(author: str) -> None:
        table = FeedTable(dynamo, TABLE, write_concurrency=1)
        table.read_pace = ReadPace(redis_limiter(redis_clients(), OwnKeys().follower_reads, rcu), rcu,
                                   max_wait_seconds=5)
        for _ in table.follower_pages_from(author):
            if time.monotonic() > stop:
                return

    started = time.monotonic()
    threads = [threading.Thread(target=walker, args=(author,)) for author in ("star", "star", "star", "star", "other")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.monotonic() - started
    star, other = dynamo.read[keys.user_pk("star")], dynamo.read[keys.user_pk("other")]
    # A sliding window lets at most one window's worth in at the start, then the rate; one page
    # is read before its charge is known (DynamoDB charges after a read too) by each walker.
    assert star <= rcu * (elapsed + 1) + 4 * PAGE_RCU, (star, elapsed)
    assert other >= rcu * seconds / 2  # its own pace: four walkers of another author took none of it
    assert star >= rcu * seconds / 2  # and the walkers were paced, not stalled
    assert all(r["ReturnConsumedCapacity"] == "TOTAL" for r in dynamo.requests)
    names = redis_clients().keys("*")
    assert names and all(k.startswith(b"feedpipe:follower_reads:") for k in names)


def test_an_unpaced_walk_asks_for_no_consumed_capacity_and_reads_every_page() -> None:
    dynamo = PagedFollowers(followers=35)
    table = FeedTable(dynamo, TABLE)
    assert [len(ids) for ids, _ in table.follower_pages_from("star")] == [10, 10, 10, 5]
    assert all("ReturnConsumedCapacity" not in r for r in dynamo.requests)


def test_a_paced_walk_charges_each_page_to_its_author_before_the_next_is_read() -> None:
    dynamo, charged = PagedFollowers(followers=35), []
    table = FeedTable(dynamo, TABLE)
    table.read_pace = ReadPace(lambda key, cost: charged.append((key, cost, len(dynamo.requests))) is None, 3000, 5)
    pages = [len(ids) for ids, _ in table.follower_pages_from("star")]
    assert pages == [10, 10, 10, 5]  # paced, the walk is the same
    assert charged == [(keys.user_pk("star"), int(PAGE_RCU), n) for n in (1, 2, 3, 4)]


def test_a_wait_is_bounded_sleeps_instead_of_spinning_and_never_fails_the_walk() -> None:
    clock = FakeClock()
    tries: list[int] = []
    pace = ReadPace(lambda key, cost: tries.append(cost) is not None, 100, max_wait_seconds=2.0, clock=clock,
                    sleep=clock.sleep)
    pace.spent(keys.user_pk("star"), 10)  # returns: the walk reads on unpaced
    assert clock.now - 1000.0 <= 2.0
    assert 2 <= len(tries) <= 2.0 / 0.01 + 1  # slept between tries, a poll at least the piece's time


def test_a_charge_bigger_than_a_quarter_of_the_pace_is_taken_in_pieces_that_fit() -> None:
    costs: list[int] = []
    pace = ReadPace(lambda key, cost: costs.append(cost) is None, 400, 5)
    pace.spent("USER#star", 250.5)
    assert costs == [100, 100, 51]  # rounded up: a partial unit is a unit spent


def test_consumed_units_are_read_from_a_response_or_zero() -> None:
    assert consumed_units({"ConsumedCapacity": {"CapacityUnits": 63.5}}) == 63.5
    assert consumed_units({"Items": []}) == 0.0
    assert consumed_units({"ConsumedCapacity": {"CapacityUnits": "lots"}}) == 0.0


def test_the_pace_is_on_by_default_off_at_zero_off_on_a_cluster_and_a_bad_value_is_one_error() -> None:
    client = fakeredis.FakeRedis()
    settings = load_settings({"FEEDPIPE_KEY_PREFIX": "fp1:"})
    pace = build_read_pace(settings, client, OwnKeys(settings.key_prefix))
    assert pace is not None and pace.rcu_per_second == 2400  # four fifths of a partition's 3,000
    pace.spent(keys.user_pk("star"), 5)
    assert [k.startswith(b"fp1:follower_reads:") for k in client.keys("*")] == [True]
    assert build_read_pace(load_settings({"FEEDPIPE_FOLLOWER_READ_RCU": "0"}), client, OwnKeys()) is None

    class ClusterLike:  # a RedisCluster has no single connection pool
        pass

    assert build_read_pace(settings, ClusterLike(), OwnKeys()) is None  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="FEEDPIPE_FOLLOWER_READ_RCU"):
        load_settings({"FEEDPIPE_FOLLOWER_READ_RCU": "-1"})


def test_a_walks_last_page_and_a_split_probe_are_handed_on_at_once_a_page_with_more_waits_its_turn() -> None:
    clock = FakeClock()
    table = FeedTable(PagedFollowers(followers=5), TABLE)
    table.read_pace = ReadPace(lambda key, cost: False, 100, max_wait_seconds=2.0, clock=clock, sleep=clock.sleep)
    assert [len(ids) for ids, _ in table.follower_pages_from("star")] == [5]  # one page: the last
    assert table.last_follower("star") == "f000000"
    assert clock.now == 1000.0  # the window was full, and neither waited
    table.client = PagedFollowers(followers=15)
    assert [len(ids) for ids, _ in table.follower_pages_from("star")] == [10, 5]
    assert 1000.0 < clock.now <= 1002.0  # the first page, with more after it, waited (its bound)


def test_a_read_pace_whose_redis_is_down_leaves_the_walk_unpaced_and_whole() -> None:
    def down(key: str, cost: int) -> bool:
        raise redis.ConnectionError("Connection refused")

    table = FeedTable(PagedFollowers(followers=35), TABLE)
    table.read_pace = ReadPace(down, 2400, max_wait_seconds=5)
    assert [len(ids) for ids, _ in table.follower_pages_from("star")] == [10, 10, 10, 5]


def test_the_stores_walk_at_the_pace_of_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = load_settings({"FEEDPIPE_FOLLOWER_READ_RCU": "1200"})
    stores = build_stores(settings, redis=fakeredis.FakeRedis())
    assert stores.table.read_pace is not None and stores.table.read_pace.rcu_per_second == 1200
