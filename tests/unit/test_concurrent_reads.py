"""One consumer reads its shards at once: the reads overlap, yet every shard's batches are
published in order and checkpointed only once published, a failing shard holds nobody back, and
a stop drains the reads in flight."""

from __future__ import annotations

import functools
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from botocore.exceptions import ClientError

from feedpipe.adapters.leases import SHARD_END, Lease
from feedpipe.adapters.streams import ThrottledError
from feedpipe.consumers.consumer import StreamConsumer
from feedpipe.consumers.leasing import LeaseCoordinator
from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.dev.local import wait_for
from tests.fakes import FakeDeadLetters, FakeDispatcher, FakeLeaseTable, FakeShardSource, follow_record

DEADLINE = 10.0  # seconds a gated read waits for the others before the test fails


@dataclass
class GatedSource(FakeShardSource):
    """Shards of records whose reads first pass ``gate(shard_id)``, on whatever thread reads."""

    gate: Callable[[str], None] = lambda shard_id: None
    reader_threads: set[str] = field(default_factory=set)

    def read(self, iterator, limit):  # type: ignore[no-untyped-def]
        shard_id = iterator.partition("|")[0]
        self.reader_threads.add(threading.current_thread().name)
        self.gate(shard_id)
        return super().read(iterator, limit)


def _stream(shards: int, per_shard: int, closed: bool = True) -> GatedSource:
    source = GatedSource()
    for k in range(shards):
        shard = f"s{k}"
        source.add_shard(shard, [follow_record(k * 1000 + i, shard, f"{shard}-{i}") for i in range(1, per_shard + 1)],
                         closed=closed)
    return source


@dataclass
class CheckedLeases(FakeLeaseTable):
    """Fails the consumer at once if a checkpoint names a record not yet published."""

    dispatcher: FakeDispatcher = field(default_factory=FakeDispatcher)

    def checkpoint(self, lease: Lease, owner: str, checkpoint: str, last_record_ms: int | None) -> Lease:
        if checkpoint != SHARD_END:
            published = {e.meta.sequence_number for e in self.dispatcher.events}
            assert checkpoint in published, f"checkpoint {checkpoint} of {lease.shard_id} before its publish"
        return super().checkpoint(lease, owner, checkpoint, last_record_ms)


def _consumer(source: FakeShardSource, concurrency: int, per_read: int = 2,
              dispatcher: FakeDispatcher | None = None, leases: FakeLeaseTable | None = None) -> StreamConsumer:
    pipeline = RecordPipeline(dispatcher or FakeDispatcher(), FakeDeadLetters(), {"private"})
    coordinator = LeaseCoordinator(leases if leases is not None else FakeLeaseTable(), "solo")
    return StreamConsumer(source, coordinator, pipeline, records_per_read=per_read, idle_poll_seconds=0.001,
                          aws_backoff_seconds=0.001, read_concurrency=concurrency)


def _by_shard(dispatcher: FakeDispatcher) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for event in dispatcher.events:
        seen[event.follower_id].append(int(event.meta.sequence_number))  # type: ignore[attr-defined]
    return seen


def _run_until(consumer: StreamConsumer, done: Callable[[], bool], what: str) -> threading.Thread:
    """Run ``consumer`` on a thread until ``done()``, then stop it; returns the joined thread."""
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_for(done, DEADLINE, what)
    finally:
        consumer.request_stop()
        thread.join(DEADLINE)
    return thread


def _reads_running() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("shard-read")]


def test_reads_of_different_shards_are_in_flight_together():
    """Each shard's first read waits until every shard's first read has started: one after
    another, that could never finish."""
    shards = 6
    source = _stream(shards, 4)
    everyone = threading.Barrier(shards, timeout=DEADLINE)
    first = set()

    def all_at_once(shard_id: str) -> None:
        if shard_id not in first:
            first.add(shard_id)
            everyone.wait()

    source.gate = all_at_once
    dispatcher = FakeDispatcher()
    _consumer(source, concurrency=shards, dispatcher=dispatcher).run(stop_when_idle=True)

    assert _by_shard(dispatcher) == {f"s{k}": [k * 1000 + i for i in range(1, 5)] for k in range(shards)}


def test_with_a_concurrency_of_one_shards_are_read_one_after_another_on_the_consumers_thread():
    source = _stream(2, 4)
    together = threading.Barrier(2, timeout=0.2)
    source.gate = lambda shard_id: together.wait()

    with pytest.raises(threading.BrokenBarrierError):  # the second read never came while the first waited
        _consumer(source, concurrency=1).run(stop_when_idle=True)

    assert source.reader_threads == {threading.current_thread().name}


def test_each_shard_is_published_in_order_and_checkpointed_only_after_its_publish():
    """Reads come back last shard first (each waits for the next shard's batch to be
    published), so the consumer handles them in another order than it started them."""
    shards, per_shard, per_read = 5, 12, 3
    source = _stream(shards, per_shard)
    dispatcher = FakeDispatcher()
    leases = CheckedLeases(dispatcher=dispatcher)
    reads: Counter[str] = Counter()
    changed = threading.Condition()

    def batches_published(shard_id: str) -> int:
        return sum(1 for e in dispatcher.events if e.follower_id == shard_id) // per_read  # type: ignore[attr-defined]

    def after_the_next_shard(shard_id: str) -> None:
        k = int(shard_id[1:])
        with changed:
            reads[shard_id] += 1
            later = f"s{k + 1}"
            if k + 1 < shards and not changed.wait_for(lambda: batches_published(later) >= reads[shard_id], DEADLINE):
                raise AssertionError(f"{later}'s batch was never published")

    def publish_and_tell(events):  # type: ignore[no-untyped-def]
        with changed:
            dispatcher.events.extend(events)
            changed.notify_all()
        return 1

    source.gate = after_the_next_shard
    dispatcher.dispatch = publish_and_tell  # type: ignore[method-assign]
    _consumer(source, concurrency=shards, per_read=per_read, dispatcher=dispatcher, leases=leases).run(
        stop_when_idle=True)

    seen = _by_shard(dispatcher)
    assert seen == {f"s{k}": [k * 1000 + i for i in range(1, per_shard + 1)] for k in range(shards)}
    assert dispatcher.events[0].follower_id == f"s{shards - 1}"  # type: ignore[attr-defined]
    assert leases.saved == {f"s{k}": SHARD_END for k in range(shards)}
    assert [c for s, c in leases.history if s == "s0"] == [f"{i:021d}" for i in (3, 6, 9, 12)] + [SHARD_END]


def test_never_more_reads_in_flight_than_the_setting_and_never_two_of_one_shard():
    concurrency = 4
    source = _stream(12, 10)
    lock = threading.Condition()
    running: Counter[str] = Counter()
    peak = [0]

    def counted(shard_id: str) -> None:
        with lock:
            running[shard_id] += 1
            peak[0] = max(peak[0], sum(running.values()))
            assert running[shard_id] == 1, f"{shard_id} read by two threads at once"
            lock.notify_all()
            lock.wait_for(lambda: peak[0] >= concurrency, DEADLINE)  # overlap for real, at least once
            running[shard_id] -= 1

    source.gate = counted
    dispatcher = FakeDispatcher()
    _consumer(source, concurrency=concurrency, dispatcher=dispatcher).run(stop_when_idle=True)

    assert peak[0] == concurrency
    assert all(seqs == sorted(seqs) and len(seqs) == 10 for seqs in _by_shard(dispatcher).values())
    assert len(_by_shard(dispatcher)) == 12


def test_a_shard_whose_reads_fail_does_not_stall_the_others():
    source = _stream(4, 6, closed=False)
    failures = [0]

    def s0_down(shard_id: str) -> None:
        if shard_id == "s0":
            failures[0] += 1
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "GetRecords")

    source.gate = s0_down
    dispatcher, leases = FakeDispatcher(), FakeLeaseTable()
    thread = _run_until(_consumer(source, concurrency=4, dispatcher=dispatcher, leases=leases),
                        lambda: all(leases.saved.get(f"s{k}") == f"{k * 1000 + 6:021d}" for k in (1, 2, 3)),
                        "the healthy shards to be checkpointed to their ends")

    assert failures[0] >= 1 and "s0" not in leases.saved and not thread.is_alive()
    assert sorted(_by_shard(dispatcher)) == ["s1", "s2", "s3"]


def test_shards_throttled_together_do_not_hold_up_the_others():
    """Eight shards throttled on every read, one with records: each throttled shard waits out
    its own backoff, so the healthy one is read round after round. A wait on the consumer's
    thread for each throttled read (up to 10 s each, eight a round) would hold it for minutes."""
    source = _stream(9, 0, closed=False)
    source.add_shard("s9", [follow_record(9000 + i, "s9", f"s9-{i}") for i in range(1, 21)], closed=False)
    throttled = Counter[str]()

    def throttled_but_s9(shard_id: str) -> None:
        if shard_id != "s9":
            throttled[shard_id] += 1
            raise ThrottledError("Rate exceeded")

    source.gate = throttled_but_s9
    dispatcher, leases = FakeDispatcher(), FakeLeaseTable()
    thread = _run_until(_consumer(source, concurrency=10, dispatcher=dispatcher, leases=leases),
                        lambda: leases.saved.get("s9") == f"{9020:021d}", "s9 to be read to its newest record")

    assert not thread.is_alive() and sorted(throttled) == [f"s{k}" for k in range(9)]
    assert _by_shard(dispatcher) == {"s9": [9000 + i for i in range(1, 21)]}


def test_an_error_that_stops_the_consumer_leaves_no_read_running():
    source = _stream(4, 6)
    all_started = threading.Barrier(4, timeout=DEADLINE)
    denied = threading.Event()
    finished: list[str] = []

    def deny_s0(shard_id: str) -> None:
        all_started.wait()
        if shard_id == "s0":
            denied.set()
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "GetRecords")
        denied.wait(DEADLINE)  # still in flight when s0's error reaches the consumer's thread
        finished.append(shard_id)

    source.gate = deny_s0
    with pytest.raises(ClientError):
        _consumer(source, concurrency=4).run(stop_when_idle=True)

    assert _reads_running() == []
    assert sorted(finished) == ["s1", "s2", "s3"]  # the consumer waited for every read in flight


def test_errors_of_reads_the_round_never_handled_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Two shards denied at once: the consumer stops on the first error it handles, and the
    other is in the log, not lost behind it."""
    source = _stream(2, 4)
    both_started = threading.Barrier(2, timeout=DEADLINE)

    def deny(shard_id: str) -> None:
        both_started.wait()
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": f"no {shard_id}"},
                           "ResponseMetadata": {"HTTPStatusCode": 400}}, "GetRecords")

    source.gate = deny
    with pytest.raises(ClientError) as raised:
        _consumer(source, concurrency=2).run(stop_when_idle=True)

    other = "s1" if "no s0" in str(raised.value) else "s0"
    assert any("left unhandled" in r.getMessage() and f"no {other}" in r.getMessage() for r in caplog.records)


def test_a_stop_publishes_and_checkpoints_the_reads_in_flight_then_returns():
    shards = 4
    source = _stream(shards, 6, closed=False)
    dispatcher, leases = FakeDispatcher(), FakeLeaseTable()
    consumer = _consumer(source, concurrency=shards, dispatcher=dispatcher, leases=leases)
    # The stop comes once every shard's first read is in flight, before any returns.
    in_flight = threading.Barrier(shards, action=consumer.request_stop, timeout=DEADLINE)
    source.gate = lambda shard_id: in_flight.wait()

    consumer.run()

    assert _by_shard(dispatcher) == {f"s{k}": [k * 1000 + 1, k * 1000 + 2] for k in range(shards)}
    assert leases.saved == {f"s{k}": f"{k * 1000 + 2:021d}" for k in range(shards)}
    assert all(lease.owner is None for lease in leases.leases.values())  # handed back
    assert _reads_running() == []


def _group_of_every_shard(consumer: StreamConsumer) -> list:  # type: ignore[type-arg]
    """Every held shard's next read, as reads that came back together (``ReadPool`` hands the
    consumer every read finished by the time it asks)."""
    consumer._maybe_refresh_shards()
    return [(state, functools.partial(consumer._fetch, state)) for state in consumer._owned_shards()]


def test_batches_read_together_go_out_in_one_dispatch_each_checkpointed_after_it():
    shards, per_read = 3, 2
    dispatcher = FakeDispatcher()
    leases = CheckedLeases(dispatcher=dispatcher)
    calls: list[list[str]] = []
    dispatch = dispatcher.dispatch

    def counted(events):  # type: ignore[no-untyped-def]
        calls.append([e.follower_id for e in events])
        return dispatch(events)

    dispatcher.dispatch = counted  # type: ignore[method-assign]
    consumer = _consumer(_stream(shards, 4), concurrency=shards, per_read=per_read, dispatcher=dispatcher,
                         leases=leases)

    polls = consumer._poll_group(_group_of_every_shard(consumer))

    assert polls == [per_read] * shards
    assert calls == [[f"s{k}" for k in range(shards) for _ in range(per_read)]]  # one dispatch, shard by shard
    assert leases.saved == {f"s{k}": f"{k * 1000 + per_read:021d}" for k in range(shards)}
    assert consumer.totals.records == shards * per_read and consumer.totals.messages == 1


def test_a_broker_outage_holds_every_checkpoint_of_the_group_until_it_is_published():
    shards = 3
    dispatcher = FakeDispatcher(fail_next=2)
    leases = CheckedLeases(dispatcher=dispatcher)
    consumer = _consumer(_stream(shards, 4), concurrency=shards, dispatcher=dispatcher, leases=leases)

    consumer._poll_group(_group_of_every_shard(consumer))

    assert dispatcher.fail_next == 0 and len(_by_shard(dispatcher)) == shards  # published once it was back
    assert leases.saved == {f"s{k}": f"{k * 1000 + 2:021d}" for k in range(shards)}


def test_a_failed_read_handed_out_with_the_one_the_round_ends_on_is_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both reads of a group failed; the caller handles the first, whose error ends the round:
    the second, handed out but never handled, is in the log (and the first, the caller's to
    report, is not logged twice). Forced: the pool waits for every read, so they come back in
    one group."""
    from concurrent import futures

    from feedpipe.consumers import read_pool

    monkeypatch.setattr(read_pool, "wait", lambda running, **_: futures.wait(running))

    def read(item: str) -> None:
        raise ValueError(f"no {item}")

    pool = read_pool.ReadPool(2)
    with pool, pytest.raises(ValueError, match="no a"), pool.read_each(["a", "b"], read) as groups:
        group = next(groups)
        assert [item for item, _ in group] == ["a", "b"]
        group[0][1]()

    unhandled = [r.getMessage() for r in caplog.records if "left unhandled" in r.getMessage()]
    assert len(unhandled) == 1 and "no b" in unhandled[0], unhandled
