"""Leases: the DynamoDB lease table's conditional writes on moto, and the coordinator's
decisions (take, renew, fail over, balance, hand back, clean up) on it and on the fake."""

from __future__ import annotations

from typing import Any

import pytest

from feedpipe.adapters.leases import SHARD_END, LeaseLostError, LeaseTable
from feedpipe.adapters.streams import Shard
from feedpipe.consumers.leasing import LeaseCoordinator
from tests.adapters.conftest import LEASE_TABLE
from tests.fakes import FakeLeaseTable

STREAM = "arn:aws:dynamodb:us-east-1:1:table/SocialMediaApp/stream/A"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["dynamodb", "fake"])
def leases(request: pytest.FixtureRequest) -> Any:
    if request.param == "fake":
        return FakeLeaseTable()
    dynamodb = request.getfixturevalue("dynamodb")
    request.getfixturevalue("tables")
    return LeaseTable(dynamodb, LEASE_TABLE, STREAM)


def _coordinator(leases: Any, owner: str, clock: Clock) -> LeaseCoordinator:
    return LeaseCoordinator(leases, owner, failover_seconds=10, clock=clock)


def _tick_all(clock: Clock, *coordinators: LeaseCoordinator, seconds: float = 6) -> None:
    for _ in range(3):
        clock.now += seconds
        for c in coordinators:
            c.tick()


def test_the_table_refuses_stale_takes_renews_and_checkpoints(dynamodb: Any, tables: Any) -> None:
    table = LeaseTable(dynamodb, LEASE_TABLE, STREAM)
    assert table.create("s1", ("s0",)) and not table.create("s1", ())
    seen = table.list()["s1"]
    mine = table.take(seen, "a")
    assert mine is not None and table.take(seen, "b") is None  # b saw an old counter
    assert table.renew(mine, "b") is None
    mine = table.renew(mine, "a")
    assert mine is not None
    stolen = table.take(mine, "b")
    assert stolen is not None and stolen.owner == "b"
    with pytest.raises(LeaseLostError):
        table.checkpoint(mine, "a", "42", None)  # a zombie cannot move the checkpoint
    table.checkpoint(stolen, "b", "43", 1_700_000_000_000)
    stored = table.list()["s1"]
    assert (stored.owner, stored.checkpoint, stored.parent_ids, stored.last_record_ms) == (
        "b", "43", ("s0",), 1_700_000_000_000)
    assert table.release(stored, "b") and table.list()["s1"].owner is None
    assert LeaseTable(dynamodb, LEASE_TABLE, "arn:other").list() == {}  # leases are per stream


def test_a_lease_cleaned_up_under_a_zombie_refuses_its_writes(leases: Any) -> None:
    """A slow consumer still holding a finished shard's lease, after another finished it and
    its children let it be deleted: every write of the zombie's fails as a lost lease, in the
    table and in its fake alike (the fake raised KeyError, which killed a consumer's thread)."""
    leases.create("s0", ())
    zombie = leases.take(leases.list()["s0"], "slow")
    taken = leases.take(zombie, "fast")
    leases.checkpoint(taken, "fast", SHARD_END, None)
    assert leases.delete_finished("s0")

    with pytest.raises(LeaseLostError):
        leases.checkpoint(zombie, "slow", "70", None)
    assert leases.take(zombie, "slow") is None
    assert leases.renew(zombie, "slow") is None
    assert not leases.release(zombie, "slow")


def test_three_consumers_share_the_shards_fairly(leases: Any) -> None:
    clock = Clock()
    consumers = [_coordinator(leases, name, clock) for name in "abc"]
    consumers[0].sync([Shard(f"s{i}") for i in range(6)])

    _tick_all(clock, *consumers)

    assert sorted(len(c.held) for c in consumers) == [2, 2, 2]
    owners = {lease.owner for lease in leases.list().values()}
    assert owners == {"a", "b", "c"}


def test_a_dead_consumers_shards_are_taken_after_the_failover_time(leases: Any) -> None:
    clock = Clock()
    a, b = _coordinator(leases, "a", clock), _coordinator(leases, "b", clock)
    a.sync([Shard(f"s{i}") for i in range(4)])
    _tick_all(clock, a, b)
    assert len(a.held) == len(b.held) == 2

    clock.now += 5  # a dies: its counters stop moving
    b.tick()
    assert len(b.held) == 2  # not yet: 5 s < failover
    _tick_all(clock, b, seconds=6)
    assert len(b.held) == 4


def test_a_newcomer_steals_one_lease_a_round_until_balanced(leases: Any) -> None:
    clock = Clock()
    a = _coordinator(leases, "a", clock)
    a.sync([Shard(f"s{i}") for i in range(4)])
    _tick_all(clock, a)
    assert len(a.held) == 4

    b = _coordinator(leases, "b", clock)
    _tick_all(clock, a, b)

    assert (len(a.held), len(b.held)) == (2, 2)


def test_hand_back_lets_another_consumer_take_at_once(leases: Any) -> None:
    clock = Clock()
    a, b = _coordinator(leases, "a", clock), _coordinator(leases, "b", clock)
    a.sync([Shard("s1"), Shard("s2")])
    a.tick()
    assert len(a.held) == 2

    a.release_all()
    b.tick()  # no failover wait: the leases are free

    assert set(b.held) == {"s1", "s2"}


def test_children_wait_for_parents_and_finished_parents_are_cleaned_up(leases: Any) -> None:
    clock = Clock()
    a = _coordinator(leases, "a", clock)
    a.sync([Shard("parent", closed=True), Shard("child", ("parent",))])
    a.tick()
    assert set(a.held) == {"parent"}

    a.checkpoint("parent", SHARD_END, None)  # the parent ends
    a.tick()
    assert set(a.held) == {"child"}

    a.checkpoint("child", "7", None)
    _tick_all(clock, a)
    assert "parent" not in leases.list()  # cleaned up once the child started
    a.sync([Shard("parent", closed=True), Shard("child", ("parent",))])
    assert "parent" not in leases.list()  # and never re-created for a second reading


def test_leases_of_ended_grandparents_are_never_created_again(leases: Any) -> None:
    clock = Clock()
    a = _coordinator(leases, "a", clock)
    lineage = [Shard("s0", closed=True), Shard("s1", ("s0",), closed=True), Shard("s2", ("s1",))]
    a.sync(lineage)
    for shard, checkpoint in [("s0", SHARD_END), ("s1", SHARD_END), ("s2", "5")]:
        a.tick()
        assert shard in a.held
        a.checkpoint(shard, checkpoint, None)
    _tick_all(clock, a)
    assert set(leases.list()) == {"s2"}  # both ended ancestors cleaned up

    a.sync(lineage)  # the stream still lists the closed shards

    assert set(leases.list()) == {"s2"}  # s0 is not read again from TRIM_HORIZON


def test_a_long_lived_consumer_forgets_leases_cleaned_up_after_resharding(leases: Any) -> None:
    """What the coordinator notes about each lease (to tell a dead owner from a live one) used
    to be kept for every shard it ever saw: memory that only grew over months of resharding."""
    clock = Clock()
    a = _coordinator(leases, "a", clock)
    lineage = [Shard(f"s{n}", (f"s{n - 1}",) if n else (), closed=n < 11) for n in range(12)]
    a.sync(lineage)
    for shard in lineage:
        a.tick()
        assert shard.shard_id in a.held
        a.checkpoint(shard.shard_id, SHARD_END if shard.closed else "5", None)
        clock.now += 6
    _tick_all(clock, a)

    assert set(leases.list()) == {"s11"}
    assert set(a._seen) == {"s11"}  # nothing kept for the eleven leases cleaned up
