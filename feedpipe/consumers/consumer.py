"""The long-running shard consumer behind ``feedpipe consume``.

Each round reads one batch from every ready shard (a child only once its parents have ended),
publishes the batch's tasks, and only then moves the shard's checkpoint past it. A restart
resumes after the checkpoint, so a record is delivered at least once; tasks are idempotent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from kombu.exceptions import OperationalError
from tenacity import Retrying, retry_if_exception_type, stop_when_event_set, wait_random_exponential

from feedpipe.adapters.checkpoints import SHARD_END, CheckpointStore
from feedpipe.adapters.streams import (
    IteratorExpiredError,
    Shard,
    ShardSource,
    ThrottledError,
    TrimmedDataError,
    record_time_ms,
)
from feedpipe.consumers.pipeline import BatchOutcome, RecordPipeline
from feedpipe.core.records import record_sequence

log = logging.getLogger(__name__)

BROKER_ERRORS = (OperationalError, redis.RedisError, OSError)
SHARD_REFRESH_SECONDS = 10.0
IDLE_ROUNDS_TO_STOP = 2
THROTTLE_MAX_SECONDS = 10.0
NOT_READ = -1


@dataclass
class ShardState:
    shard: Shard
    checkpoint: str | None = None
    iterator: str | None = None

    @property
    def finished(self) -> bool:
        return self.checkpoint == SHARD_END


@dataclass
class ConsumerTotals:
    records: int = 0
    dispatched: int = 0
    messages: int = 0
    dead_lettered: int = 0
    ignored: int = 0
    checkpoints: int = 0
    rounds: int = 0

    def add(self, outcome: BatchOutcome) -> None:
        self.records += outcome.records
        self.dispatched += outcome.dispatched
        self.messages += outcome.messages
        self.dead_lettered += outcome.dead_lettered
        self.ignored += sum(outcome.ignored.values())


@dataclass
class StreamConsumer:
    source: ShardSource
    checkpoints: CheckpointStore
    pipeline: RecordPipeline
    records_per_read: int = 1000
    idle_poll_seconds: float = 1.0
    stop_event: threading.Event = field(default_factory=threading.Event)
    totals: ConsumerTotals = field(default_factory=ConsumerTotals)
    shards: dict[str, ShardState] = field(default_factory=dict)
    _refreshed_at: float = float("-inf")
    _throttles: int = 0

    def request_stop(self) -> None:
        self.stop_event.set()

    def run(self, stop_when_idle: bool = False) -> ConsumerTotals:
        """Consume until stopped (or, with ``stop_when_idle``, until every shard is drained)."""
        idle_rounds = 0
        while not self.stop_event.is_set():
            self._maybe_refresh_shards()
            try:
                polls = [self._poll(state) for state in self._ready_shards()]
            except BROKER_ERRORS:
                if not self.stop_event.is_set():
                    raise
                log.warning("stopping with a batch unpublished; it is re-read after restart")
                break
            self.totals.rounds += 1
            read = sum(n for n in polls if n > 0)
            # A round is idle only if every ready shard was read and had nothing new.
            idle_rounds = 0 if read or NOT_READ in polls else idle_rounds + 1
            if stop_when_idle and idle_rounds >= IDLE_ROUNDS_TO_STOP:
                break
            if not read:
                self.stop_event.wait(self.idle_poll_seconds)
        log.info("consumer stopped: %s", self.totals)
        return self.totals

    def _maybe_refresh_shards(self) -> None:
        now = time.monotonic()
        if now - self._refreshed_at < SHARD_REFRESH_SECONDS:
            return
        self._refreshed_at = now
        stream_id = self.source.stream_id
        stored = self.checkpoints.load(stream_id)
        for shard in self.source.list_shards():
            if shard.shard_id not in self.shards:
                self.shards[shard.shard_id] = ShardState(shard, stored.get(shard.shard_id))
                log.info("shard %s found (checkpoint %s)", shard.shard_id, stored.get(shard.shard_id))

    def _ready_shards(self) -> list[ShardState]:
        """Unfinished shards whose parents have ended (or are gone from the stream)."""
        return [
            state
            for state in self.shards.values()
            if not state.finished
            and all(p not in self.shards or self.shards[p].finished for p in state.shard.parent_ids)
        ]

    def _poll(self, state: ShardState) -> int:
        """Read, publish and checkpoint one batch of ``state``'s shard; returns records read,
        or NOT_READ when the read itself failed (expired, throttled, trimmed)."""
        try:
            if state.iterator is None:
                state.iterator = self.source.iterator(state.shard.shard_id, state.checkpoint)
            result = self.source.read(state.iterator, self.records_per_read)
        except IteratorExpiredError:
            log.info("iterator of shard %s expired; renewing from %s", state.shard.shard_id, state.checkpoint)
            state.iterator = None
            return NOT_READ
        except TrimmedDataError as exc:
            self._skip_trimmed(state, exc)
            return NOT_READ
        except ThrottledError:
            self._back_off()
            return NOT_READ
        self._throttles = 0
        if result.records:
            self._publish(state, result.records)
        state.iterator = result.next_iterator
        if result.next_iterator is None:
            self._checkpoint(state, SHARD_END)
            log.info("shard %s ended", state.shard.shard_id)
        return len(result.records)

    def _publish(self, state: ShardState, records: list[dict[str, Any]]) -> None:
        source = f"stream:{state.shard.shard_id}"
        for attempt in Retrying(
            retry=retry_if_exception_type(BROKER_ERRORS),
            wait=wait_random_exponential(multiplier=0.2, max=30),
            stop=stop_when_event_set(self.stop_event),
            sleep=self._pause,
            before_sleep=lambda rs: log.warning(
                "cannot publish (%s); holding the checkpoint and retrying", rs.outcome and rs.outcome.exception()
            ),
            reraise=True,
        ):
            with attempt:
                outcome = self.pipeline.handle(records, source)
        self.totals.add(outcome)
        self._checkpoint(state, record_sequence(records[-1]), record_time_ms(records[-1]))

    def _checkpoint(self, state: ShardState, checkpoint: str, last_record_ms: int | None = None) -> None:
        self.checkpoints.save(
            self.source.stream_id, state.shard.shard_id, checkpoint, state.shard.parent_ids, last_record_ms
        )
        state.checkpoint = checkpoint
        self.totals.checkpoints += 1

    def _skip_trimmed(self, state: ShardState, exc: Exception) -> None:
        log.error(
            "shard %s: records after %s were trimmed before they were read (consumer fell over "
            "24 h behind); resuming at the oldest record kept",
            state.shard.shard_id,
            state.checkpoint,
        )
        self.pipeline.dead_letters.add_many(
            [(f"stream:{state.shard.shard_id}", f"gap: trimmed data after {state.checkpoint}: {exc}", {})]
        )
        state.iterator = self.source.iterator(state.shard.shard_id, None)

    def _pause(self, seconds: float) -> None:
        self.stop_event.wait(seconds)

    def _back_off(self) -> None:
        self._throttles += 1
        delay = random.uniform(0, min(THROTTLE_MAX_SECONDS, 0.1 * 2**self._throttles))
        log.warning("stream reads throttled; backing off %.1fs", delay)
        self.stop_event.wait(delay)
