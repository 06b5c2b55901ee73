"""From a batch of raw records to published tasks: parse, dead-letter, dispatch.

Shared by every way records arrive (the shard consumer, and the Lambda handler), so they all
treat a record the same.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from feedpipe.core.events import Event
from feedpipe.core.letters import DeadLetter
from feedpipe.core.nesting import clip_depth
from feedpipe.core.records import Envelope, read_record

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def dispatch(self, events: Sequence[Event]) -> int: ...

    def send(self, task_name: str, payloads: list[dict[str, Any]]) -> None: ...


class DeadLetterSink(Protocol):
    def add_many(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass
class BatchOutcome:
    records: int = 0
    dispatched: int = 0
    messages: int = 0
    dead_lettered: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    by_record: Counter[tuple[str, str]] = field(default_factory=Counter)  # (eventName, entity)
    by_event: Counter[str] = field(default_factory=Counter)  # dispatched event kinds


@dataclass
class RecordCounts:
    """What batches came to, summed: the one counter the consumer (``progress.ConsumerTotals``)
    and the Lambda handler (``lambda_handler.InvocationSummary``) keep, each with its own extras."""

    records: int = 0
    dispatched: int = 0
    messages: int = 0
    dead_lettered: int = 0
    ignored: int = 0

    def add(self, outcome: BatchOutcome) -> None:
        self.records += outcome.records
        self.dispatched += outcome.dispatched
        self.messages += outcome.messages
        self.dead_lettered += outcome.dead_lettered
        self.ignored += sum(outcome.ignored.values())


@dataclass
class Prepared:
    """A parsed batch waiting to be delivered."""

    source: str
    outcome: BatchOutcome
    events: list[Event] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    letters_stored: bool = False
    last: Envelope | None = None  # the batch's last record: its checkpoint and its time


@dataclass
class RecordPipeline:
    dispatcher: Dispatcher
    dead_letters: DeadLetterSink
    excluded_visibilities: Collection[str]

    def handle(self, records: Sequence[dict[str, Any]], source: str) -> BatchOutcome:
        """Parse every record; dead-letter the unreadable and publish the events. Raises only
        when the dead-letter store or the broker cannot take them (nothing is acknowledged)."""
        prepared = self.prepare(records, source)
        self.deliver(prepared)
        return prepared.outcome

    def prepare(self, records: Sequence[dict[str, Any]], source: str) -> Prepared:
        """Parse a batch (no I/O): the events to publish and the records to dead-letter."""
        prepared = Prepared(source, BatchOutcome(records=len(records)))
        for record in records:
            self._prepare_one(record, prepared)
        prepared.outcome.dispatched = len(prepared.events)
        prepared.outcome.dead_lettered = len(prepared.letters)
        return prepared

    def _prepare_one(self, record: Any, prepared: Prepared) -> None:
        envelope = prepared.last = read_record(record, self.excluded_visibilities)
        outcome = prepared.outcome
        outcome.by_record[(envelope.event_name, envelope.entity)] += 1
        if envelope.error is not None:
            if envelope.unexpected is not None:  # with its traceback, as a parser bug deserves
                log.error("unexpected error parsing a record from %s", prepared.source, exc_info=envelope.unexpected)
            # A record too deep to parse may be too deep to serialize: the letter keeps what it can.
            prepared.letters.append(DeadLetter(prepared.source, envelope.error, clip_depth(record)))
        elif envelope.ignored is not None:
            outcome.ignored[envelope.ignored.entity] += 1
        elif envelope.event is not None:
            prepared.events.append(envelope.event)
            outcome.by_event[envelope.event.kind] += 1

    def deliver(self, prepared: Prepared) -> None:
        """Dead letters first (once, however often a broker outage makes the caller retry),
        then the events."""
        self.deliver_all([prepared])

    def deliver_all(self, batches: Sequence[Prepared]) -> None:
        """``deliver`` for batches handled together (shards read at once): each batch's dead
        letters, then every batch's events in one dispatch, so they fill fewer messages. The
        messages sent are counted on the first batch's outcome."""
        for prepared in batches:
            self.store_letters(prepared)
        events = [event for prepared in batches for event in prepared.events]
        if not events:
            return
        batches[0].outcome.messages = self.dispatcher.dispatch(events)
        if log.isEnabledFor(logging.DEBUG):
            for prepared in batches:
                for event in prepared.events:
                    post = getattr(event, "post", None)
                    log.debug("dispatched %s", event.kind, extra={
                        "event_id": event.meta.event_id, "shard": prepared.source, "post_id": post and post.post_id})

    def store_letters(self, prepared: Prepared) -> None:
        """The batch's dead letters, once."""
        if prepared.letters and not prepared.letters_stored:
            self.dead_letters.add_many(prepared.letters)
            prepared.letters_stored = True
            log.warning("dead-lettered %d records from %s: %s", len(prepared.letters), prepared.source,
                        prepared.letters[0][1])
