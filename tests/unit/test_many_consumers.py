"""Three consumers sharing a resharding stream (a faithful fake of the Streams API): every
record dispatched, each key's records in order across parent and child shards, and a
stopping consumer's shards handed over at once, without a gap."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from feedpipe.consumers.consumer import StreamConsumer
from feedpipe.consumers.leasing import LeaseCoordinator
from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.core.events import Event
from feedpipe.dev.local import wait_for
from tests.fakes import FakeDeadLetters, FakeLeaseTable, FakeShardSource, follow_record

FAILOVER = 2.0

# s0 and s1 split and merge: s0 -> s2 + s3 (split), s1 + s2 -> s4 (merge). Each key lives on one
# lineage, as DynamoDB routes an item's changes: a key seen in a parent continues in its child.
LINEAGE = {"s0": (), "s1": (), "s2": ("s0",), "s3": ("s0",), "s4": ("s1", "s2")}
PATHS = {"k-a": ["s0", "s2", "s4"], "k-b": ["s0", "s3"], "k-c": ["s1", "s4"], "k-d": ["s1", "s4"], "k-e": ["s0", "s2"]}
PER_SHARD_PER_KEY = 40
RECORDS = 3000


def _stream() -> tuple[FakeShardSource, int]:
    seq = itertools.count(1)
    records: dict[str, list[dict]] = defaultdict(list)
    # Lineage order: every record of a parent is older than every record of its children.
    for shard in ["s0", "s1", "s2", "s3", "s4"]:
        for key, path in sorted(PATHS.items()):
            if shard in path:
                records[shard] += [follow_record(next(seq), key, f"{shard}-{i}") for i in range(PER_SHARD_PER_KEY)]
    source = FakeShardSource()
    for shard, parents in LINEAGE.items():
        source.add_shard(shard, records[shard], parents=parents, closed=shard not in ("s3", "s4"))
    return source, sum(len(r) for r in records.values())


@dataclass
class Recorder:
    """One dispatcher per consumer, writing into one shared, ordered log."""

    log: list[tuple[str, int]]
    lock: threading.Lock
    name: str
    mine: list[int] = field(default_factory=list)

    def dispatch(self, events: Sequence[Event]) -> int:
        with self.lock:
            for event in events:
                seq = int(event.meta.sequence_number)
                self.log.append((event.follower_id, seq))  # type: ignore[union-attr]
                self.mine.append(seq)
        return 1


def _start(
    source: FakeShardSource, table: FakeLeaseTable, recorder: Recorder
) -> tuple[StreamConsumer, threading.Thread]:
    pipeline = RecordPipeline(recorder, FakeDeadLetters(), {"private"})
    consumer = StreamConsumer(source, LeaseCoordinator(table, recorder.name, FAILOVER), pipeline,
                              records_per_read=7, idle_poll_seconds=0.01)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    return consumer, thread


def test_three_consumers_process_every_record_in_key_order_across_reshards() -> None:
    source, total = _stream()
    table, log, lock = FakeLeaseTable(), [], threading.Lock()
    recorders = [Recorder(log, lock, name) for name in ("c1", "c2", "c3")]
    running = [_start(source, table, r) for r in recorders]
    try:
        wait_for(lambda: len({seq for _, seq in log}) == total, 60, "every record")
    finally:
        for consumer, thread in running:
            consumer.request_stop()
            thread.join(10)

    seen = [seq for _, seq in log]
    assert sorted(set(seen)) == list(range(1, total + 1))
    for key in PATHS:
        # A stolen lease resumes at its last checkpoint, so some records go out twice (at least
        # once); what must hold is the order in which each record first went out.
        first_seen = list(dict.fromkeys(seq for k, seq in log if k == key))
        assert first_seen == sorted(first_seen), f"{key}'s records went out of order across parent and child shards"
    assert all(lease.finished for shard, lease in table.leases.items() if shard in ("s0", "s1", "s2"))


def test_a_stopping_consumer_hands_its_shards_over_at_once_without_a_gap() -> None:
    source = FakeShardSource()
    for shard in ("r1", "r2"):  # open shards: their leases stay held until handed back
        source.add_shard(shard, [follow_record(n, shard, f"{shard}-{n}") for n in range(1, RECORDS + 1)])
    table, log, lock = FakeLeaseTable(), [], threading.Lock()
    first = Recorder(log, lock, "first")
    consumer, thread = _start(source, table, first)
    wait_for(lambda: {s for s, _ in table.history} == {"r1", "r2"}, 30, "the first consumer to checkpoint both")
    second = Recorder(log, lock, "second")
    other, other_thread = _start(source, table, second)

    stopped_at = time.monotonic()
    consumer.request_stop()
    thread.join(10)
    wait_for(lambda: all(lease.owner == "second" for lease in table.leases.values()), 30, "the hand-over")
    handover = time.monotonic() - stopped_at
    for shard in ("r1", "r2"):  # the stream goes on after the hand-over
        source.shards[shard] += [follow_record(n, shard, f"{shard}-{n}") for n in range(RECORDS + 1, RECORDS + 101)]
    wait_for(lambda: len(set(log)) == 2 * (RECORDS + 100), 60, "every record, none skipped at the hand-over")
    other.request_stop()
    other_thread.join(10)

    assert handover < FAILOVER, f"hand-over took {handover:.1f}s: no faster than a crash failover"
    assert set(log) == {(shard, n) for shard in ("r1", "r2") for n in range(1, RECORDS + 101)}
    assert len(second.mine) >= 200  # everything after the hand-over came from the second consumer
