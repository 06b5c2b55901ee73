"""``FEEDPIPE_INITIAL_POSITION=LATEST``: a first start begins after each shard's newest record,
kill-safe, while shards found later (a split's children) and later starts are untouched."""

from __future__ import annotations

from feedpipe.adapters.leases import SHARD_END, TRIM_HORIZON
from feedpipe.config import InitialPosition, load_settings
from feedpipe.consumers.consumer import StreamConsumer
from feedpipe.consumers.leasing import LeaseCoordinator
from feedpipe.consumers.pipeline import RecordPipeline
from tests.fakes import FakeDeadLetters, FakeDispatcher, FakeLeaseTable, FakeShardSource, follow_record


def _run(source: FakeShardSource, table: FakeLeaseTable, latest: bool) -> list[str]:
    dispatcher = FakeDispatcher()
    pipeline = RecordPipeline(dispatcher, FakeDeadLetters(), {"private"})
    leases = LeaseCoordinator(table, "solo", start_at_latest=latest)
    StreamConsumer(source, leases, pipeline, records_per_read=2, idle_poll_seconds=0.001).run(stop_when_idle=True)
    return [e.followed_id for e in dispatcher.events]  # type: ignore[attr-defined]


def _history() -> FakeShardSource:
    source = FakeShardSource()
    source.add_shard("old", [follow_record(i, "a", f"old{i}") for i in range(1, 4)], closed=True)
    source.add_shard("open", [follow_record(i, "a", f"h{i}") for i in range(4, 9)], parents=("old",))
    source.add_shard("empty", [])
    return source


def test_a_first_start_at_latest_dispatches_only_what_comes_after_it() -> None:
    source, table = _history(), FakeLeaseTable()
    assert _run(source, table, latest=True) == []
    assert table.saved.get("old", SHARD_END) == SHARD_END  # done at once (then cleaned up)
    assert {k: v for k, v in table.saved.items() if k != "old"} == {"open": f"{8:021d}", "empty": TRIM_HORIZON}

    source.shards["open"] += [follow_record(9, "a", "new9")]
    source.shards["empty"] += [follow_record(10, "a", "new10")]
    source.closed.add("open")  # a split: its children's records are all new
    source.add_shard("child", [follow_record(11, "a", "kid11"), follow_record(12, "a", "kid12")], parents=("open",))
    assert sorted(_run(source, table, latest=True)) == ["kid11", "kid12", "new10", "new9"]


def test_a_consumer_killed_before_it_read_anything_new_loses_nothing() -> None:
    source, table = _history(), FakeLeaseTable()
    _run(source, table, latest=True)  # pinned; then killed (a new process starts below)
    source.shards["open"] += [follow_record(9, "a", "while-down")]
    assert _run(source, table, latest=True) == ["while-down"]


def test_a_stream_with_leases_already_is_not_a_first_start() -> None:
    source, table = _history(), FakeLeaseTable()
    assert len(_run(source, table, latest=False)) == 8
    source.add_shard("later", [follow_record(20, "a", "l20")])
    assert _run(source, table, latest=True) == ["l20"]


def test_trim_horizon_is_the_default() -> None:
    assert load_settings({}).initial_position is InitialPosition.TRIM_HORIZON
    assert load_settings({"FEEDPIPE_INITIAL_POSITION": "LATEST"}).initial_position is InitialPosition.LATEST
