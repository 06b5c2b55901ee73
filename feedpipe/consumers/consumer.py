"""The long-running shard consumer behind ``feedpipe consume``.

Each round reads one batch from every shard whose lease this consumer holds (a child is only
leased once its parents have ended), publishes the batch's tasks, and only then moves the
shard's checkpoint past it. The reads of different shards overlap, on a pool of threads
(``read_pool``); publishing and checkpointing stay on the consumer's thread, one batch at a
time, so each shard's batches go out in order. A restart, or another consumer taking the lease
over, resumes after the checkpoint, so a record is delivered at least once; tasks are idempotent.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis
from kombu.exceptions import OperationalError
from tenacity import Retrying, retry_if_exception_type, stop_when_event_set

from feedpipe.adapters.aws_errors import is_transient_aws_error
from feedpipe.adapters.leases import LATEST, SHARD_END, TRIM_HORIZON, LeaseLostError
from feedpipe.adapters.streams import (
    IteratorExpiredError,
    ReadResult,
    Shard,
    ShardGoneError,
    ShardSource,
    ThrottledError,
    TrimmedDataError,
)
from feedpipe.consumers.initial_position import find_newest
from feedpipe.consumers.leasing import LeaseCoordinator
from feedpipe.consumers.pipeline import BatchOutcome, Prepared, RecordPipeline
from feedpipe.consumers.progress import ConsumerTotals, Fetched, Pinned, ShardState
from feedpipe.consumers.read_pool import ReadPool
from feedpipe.core.backoff import full_jitter
from feedpipe.core.letters import DeadLetter
from feedpipe.health import Heartbeat
from feedpipe.metrics import Metrics, noop_metrics

log = logging.getLogger(__name__)

BROKER_ERRORS = (OperationalError, redis.RedisError, OSError)
SHARD_REFRESH_SECONDS = 10.0
IDLE_ROUNDS_TO_STOP = 2
THROTTLE_MAX_SECONDS = 10.0
AWS_BACKOFF_MAX_SECONDS = 30.0
NOT_READ = -1

Taken = TypeVar("Taken")


@dataclass
class StreamConsumer:
    source: ShardSource
    leases: LeaseCoordinator
    pipeline: RecordPipeline
    records_per_read: int = 1000
    read_concurrency: int = 16  # shards read at once; 1 reads them one after another
    idle_poll_seconds: float = 1.0
    aws_backoff_seconds: float = 0.5  # first wait when AWS is unavailable; doubles, capped
    metrics: Metrics = field(default_factory=noop_metrics)
    source_label: str = "dynamodb-streams"
    stop_event: threading.Event = field(default_factory=threading.Event)
    totals: ConsumerTotals = field(default_factory=ConsumerTotals)
    loop_heartbeat: Heartbeat = field(default_factory=Heartbeat)  # each pass, backoff waits too
    round_heartbeat: Heartbeat = field(default_factory=Heartbeat)  # each round that went through
    shards: dict[str, ShardState] = field(default_factory=dict)
    _refreshed_at: float = float("-inf")
    _known: dict[str, Shard] = field(default_factory=dict)
    _aws_failures: int = 0
    _behind: bool = False

    def request_stop(self) -> None:
        self.stop_event.set()

    def run(self, stop_when_idle: bool = False) -> ConsumerTotals:
        """Consume until stopped (or, with ``stop_when_idle``, until every shard is drained)."""
        try:
            with ReadPool(self.read_concurrency) as pool:
                self._consume(pool, stop_when_idle)
        finally:
            self._release_all()
        log.info("consumer stopped: %s", self.totals)
        return self.totals

    def _consume(self, pool: ReadPool, stop_when_idle: bool) -> None:
        idle_rounds = 0
        while not self.stop_event.is_set():
            self.loop_heartbeat.beat()
            try:
                self._maybe_refresh_shards()
                polls = self._poll_all(pool, self._owned_shards())
            except Exception as exc:
                if self.stop_event.is_set() and isinstance(exc, BROKER_ERRORS):
                    log.warning("stopping with a batch unpublished; it is re-read after restart")
                    return
                if not is_transient_aws_error(exc):
                    raise
                self._wait_out_aws(exc)
                continue
            self._aws_failures = 0
            self.totals.rounds += 1
            self.round_heartbeat.beat()
            read = sum(n for n in polls if n > 0)
            # Idle: every unfinished shard is ours, and each was read and had nothing new.
            busy = read or NOT_READ in polls or self.leases.unheld_ready or self._behind
            self._behind = False
            idle_rounds = 0 if busy else idle_rounds + 1
            if stop_when_idle and idle_rounds >= IDLE_ROUNDS_TO_STOP:
                return
            if not read:
                self.stop_event.wait(self.idle_poll_seconds)

    def _wait_out_aws(self, exc: BaseException) -> None:
        """DynamoDB or the stream is unavailable after botocore's own retries: hold every
        checkpoint where it is and try the round again, backing off (capped, full jitter). A
        batch published but not checkpointed is read and published again: at least once."""
        self._aws_failures += 1
        delay = _backoff(self.aws_backoff_seconds, self._aws_failures)
        log.warning("AWS unavailable (%s); holding the checkpoints, retrying in %.1fs", exc, delay)
        self._refreshed_at = float("-inf")  # list shards and sync leases again first
        self.stop_event.wait(delay)

    def _release_all(self) -> None:
        """Hand every lease back, so others take our shards at once; during an AWS outage
        they expire instead."""
        try:
            self.leases.release_all()
        except Exception as exc:
            if not is_transient_aws_error(exc):
                raise
            log.warning("could not hand the leases back (%s); they expire for others to take", exc)

    def _maybe_refresh_shards(self) -> None:
        now = time.monotonic()
        if now - self._refreshed_at < SHARD_REFRESH_SECONDS:
            return
        self._refreshed_at = now
        shards = self.source.list_shards()
        self.leases.sync(shards)
        self._known = {shard.shard_id: shard for shard in shards}

    def _owned_shards(self) -> list[ShardState]:
        """The shards whose leases this consumer holds now, each resuming at its checkpoint."""
        for shard_id in self.leases.tick():
            self._forget_shard(shard_id)
        for shard_id in list(self.shards):
            if shard_id not in self.leases.held:
                self._forget_shard(shard_id)
        for shard_id, lease in self.leases.held.items():
            if shard_id not in self.shards:
                shard = self._known.get(shard_id, Shard(shard_id, lease.parent_ids))
                state = self.shards[shard_id] = ShardState(shard, lease.checkpoint)
                # Read at scrape time: it keeps rising if this loop ever hangs.
                self.metrics.checkpoint_age_seconds.labels(shard_id).set_function(state.checkpoint_age)
        self._observe_shards()
        return list(self.shards.values())

    def _poll_all(self, pool: ReadPool, states: list[ShardState]) -> list[int]:
        """One batch of every shard not waiting out a failure: read at once, handled here as
        the reads come back. The round ends when every read has (a stop drains it)."""
        now = time.monotonic()
        ready = [state for state in states if now >= state.resume_at]
        polls = [NOT_READ] * (len(states) - len(ready))
        with pool.read_each(ready, self._fetch) as groups:
            for group in groups:
                polls += self._poll_group(group)
        return polls

    def _fetch(self, state: ShardState) -> Fetched:
        """On a pool thread: the stream only, never the broker or the lease table."""
        if state.checkpoint == LATEST:
            return Pinned(*find_newest(self.source, state.shard.shard_id, self.records_per_read))
        if state.iterator is None:
            after = None if state.checkpoint == TRIM_HORIZON else state.checkpoint
            state.iterator = self.source.iterator(state.shard.shard_id, after)
        with self.metrics.stream_read_seconds.time():
            return self.source.read(state.iterator, self.records_per_read)

    def _poll_group(self, group: list[tuple[ShardState, Callable[[], Fetched]]]) -> list[int]:
        """Reads that came back together: each batch parsed (its dead letters stored), every
        batch's events published in one dispatch, then each batch checkpointed. When reads come
        back faster than the consumer handles them, their events fill fewer, fuller messages.
        Returns the records each read, or NOT_READ where the read or its shard's AWS calls
        failed (expired, throttled, trimmed, AWS unavailable: then that shard waits, the others
        go on)."""
        polls: list[int] = []
        waiting: list[tuple[int, ShardState, ReadResult, Prepared]] = []
        for state, fetched in group:
            taken = self._on_shard(state, functools.partial(self._take, state, fetched))
            if isinstance(taken, int):
                polls.append(taken)
                continue
            result, prepared = taken
            waiting.append((len(polls), state, result, prepared))
            polls.append(len(result.records))
        if waiting:
            self._until_delivered(functools.partial(self.pipeline.deliver_all, [p for *_, p in waiting]))
        for index, state, result, prepared in waiting:
            polls[index] = self._on_shard(state, functools.partial(self._advance, state, result, prepared))
        return polls

    def _on_shard(self, state: ShardState, step: Callable[[], Taken]) -> Taken | int:
        """``step()``, or NOT_READ when AWS is unavailable to it: the shard holds its checkpoint
        and waits out a backoff of its own."""
        try:
            return step()
        except Exception as exc:
            if not is_transient_aws_error(exc):
                raise
            state.failures += 1
            delay = _backoff(self.aws_backoff_seconds, state.failures)
            state.resume_at = time.monotonic() + delay
            log.warning("shard %s: AWS unavailable (%s); holding its checkpoint, retrying in %.1fs",
                        state.shard.shard_id, exc, delay)
            return NOT_READ

    def _take(self, state: ShardState, fetched: Callable[[], Fetched]) -> int | tuple[ReadResult, Prepared]:
        """A batch read, parsed and its dead letters stored, waiting to be published; or the
        records read when nothing waits (an empty read is gone past at once), NOT_READ when the
        read failed."""
        try:
            result = fetched()
        except IteratorExpiredError:
            log.info("iterator of shard %s expired; renewing from %s", state.shard.shard_id, state.checkpoint)
            state.iterator = None
            return NOT_READ
        except TrimmedDataError as exc:
            self._skip_trimmed(state, exc)
            return NOT_READ
        except ShardGoneError as exc:
            self._end_gone_shard(state, exc)
            return NOT_READ
        except ThrottledError:
            self._back_off(state)
            return NOT_READ
        if isinstance(result, Pinned):
            self._pin_newest(state, result)
            return 0
        if result.millis_behind:
            self._behind = True  # Kinesis: empty reads can still be behind the tip
        prepared = self.pipeline.prepare(result.records, f"stream:{state.shard.shard_id}") if result.records else None
        self._observe_lag(state, result, prepared)
        if prepared is None:
            self._go_past(state, result)
            state.failures = 0  # read, and nothing to publish: the shard is well again
            return 0
        self._until_delivered(functools.partial(self.pipeline.store_letters, prepared))
        return result, prepared

    def _advance(self, state: ShardState, result: ReadResult, prepared: Prepared) -> int:
        """A published batch counted and checkpointed; the shard goes on past it unless its
        lease was lost (the shard is someone else's now)."""
        outcome = prepared.outcome
        self.totals.add(outcome)
        self._count(outcome)
        assert prepared.last is not None  # a batch of at least one record
        if self._checkpoint(state, prepared.last.sequence_number, prepared.last.time_ms):
            self._go_past(state, result)
            # Only now: a read that succeeds while its checkpoint keeps failing is read and
            # published again on every attempt, which must wait longer each time.
            state.failures = 0
        return len(result.records)

    def _go_past(self, state: ShardState, result: ReadResult) -> None:
        state.iterator = result.next_iterator
        if result.next_iterator is None:
            self._checkpoint(state, SHARD_END)
            log.info("shard %s ended", state.shard.shard_id)

    def _pin_newest(self, state: ShardState, pinned: Pinned) -> None:
        log.info("shard %s: first start at its newest record (checkpoint %s), %d earlier records passed over",
                 state.shard.shard_id, pinned.checkpoint, pinned.passed)
        self._checkpoint(state, pinned.checkpoint)

    def _until_delivered(self, deliver: Callable[[], None]) -> None:
        """``deliver()`` (dead letters, a dispatch), retried through a broker outage; the
        checkpoints wait. Raises once a stop is asked for."""
        for attempt in Retrying(
            retry=retry_if_exception_type(BROKER_ERRORS),
            wait=lambda state: full_jitter(0.2, state.attempt_number, 30),
            stop=stop_when_event_set(self.stop_event),
            sleep=self._pause,
            before_sleep=lambda rs: log.warning(
                "cannot publish (%s); holding the checkpoint and retrying", rs.outcome and rs.outcome.exception()
            ),
            reraise=True,
        ):
            with attempt:
                deliver()  # a retry repeats only what did not get through

    def _checkpoint(self, state: ShardState, checkpoint: str, last_record_ms: int | None = None) -> bool:
        try:
            self.leases.checkpoint(state.shard.shard_id, checkpoint, last_record_ms)
        except LeaseLostError:
            # Another consumer took the shard: what we just published is delivered again by
            # it from the last checkpoint (at least once; the tasks are idempotent).
            log.warning("lost the lease of shard %s; dropping it", state.shard.shard_id)
            self._forget_shard(state.shard.shard_id)
            return False
        state.checkpoint = checkpoint
        state.checkpointed_at = time.monotonic()
        self.totals.checkpoints += 1
        self.metrics.checkpoints.inc()
        return True

    def _skip_trimmed(self, state: ShardState, exc: Exception) -> None:
        log.error(
            "shard %s: records after %s were trimmed before they were read (consumer fell over "
            "24 h behind); resuming at the oldest record kept",
            state.shard.shard_id,
            state.checkpoint,
        )
        self.pipeline.dead_letters.add_many(
            [DeadLetter(f"stream:{state.shard.shard_id}", f"gap: trimmed data after {state.checkpoint}: {exc}", {})]
        )
        state.iterator = None
        state.checkpoint = None  # the next poll starts at the oldest record kept (TRIM_HORIZON)

    def _end_gone_shard(self, state: ShardState, exc: Exception) -> None:
        """A shard that aged out unread: a loud gap, then ended, so its children can go on."""
        log.error("shard %s is gone from the stream after checkpoint %s: its unread records are lost",
                  state.shard.shard_id, state.checkpoint)
        self.pipeline.dead_letters.add_many(
            [DeadLetter(f"stream:{state.shard.shard_id}", f"gap: shard gone after {state.checkpoint}: {exc}", {})]
        )
        self._checkpoint(state, SHARD_END)

    def _count(self, outcome: BatchOutcome) -> None:
        for (event, entity), n in outcome.by_record.items():
            self.metrics.records.labels(self.source_label, event, entity).inc(n)
        for kind, n in outcome.by_event.items():
            self.metrics.events_dispatched.labels(kind).inc(n)
        self.metrics.messages_published.inc(outcome.messages)

    def _observe_lag(self, state: ShardState, result: ReadResult, prepared: Prepared | None) -> None:
        """How far behind the shard's tip: Kinesis says; otherwise the last record's age
        (0 once a read comes back empty: caught up)."""
        lag = 0.0
        if result.millis_behind is not None:
            lag = result.millis_behind / 1000
        elif prepared is not None and prepared.last is not None and (created := prepared.last.time_ms) is not None:
            lag = max(0.0, time.time() - created / 1000)
        self.metrics.consumer_lag_seconds.labels(state.shard.shard_id).set(lag)

    def _observe_shards(self) -> None:
        self.metrics.leases_held.set(len(self.leases.held))

    def _forget_shard(self, shard_id: str) -> None:
        self.shards.pop(shard_id, None)
        for gauge in (self.metrics.consumer_lag_seconds, self.metrics.checkpoint_age_seconds):
            with contextlib.suppress(KeyError):
                gauge.remove(shard_id)

    def _pause(self, seconds: float) -> None:
        self.loop_heartbeat.beat()  # retrying a publish through a broker outage: alive, not ready
        self.stop_event.wait(seconds)

    def _back_off(self, state: ShardState) -> None:
        """A throttled read: this shard waits out a backoff of its own, growing while it stays
        throttled; the others go on. (Waiting here, on the consumer's thread, would hold every
        shard's publishing once per throttled read of the round, and the leases' renewal with it.)"""
        state.failures += 1
        delay = _backoff(0.1, state.failures, THROTTLE_MAX_SECONDS)
        state.resume_at = time.monotonic() + delay
        log.warning("shard %s: reads throttled; backing off %.1fs", state.shard.shard_id, delay)


def _backoff(base: float, failures: int, cap: float = AWS_BACKOFF_MAX_SECONDS) -> float:
    return full_jitter(base, failures, cap)
