"""From a batch of raw records to published tasks: parse, dead-letter, dispatch.

Shared by every way records arrive (the shard consumer, and the Lambda handler), so they all
treat a record the same.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from feedpipe.core.events import Event, Ignored
from feedpipe.core.nesting import clip_depth
from feedpipe.core.records import RecordError, parse_change, unwrap_record

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def dispatch(self, events: Sequence[Event]) -> int: ...

    def send(self, task_name: str, payloads: list[dict[str, Any]]) -> None: ...


class DeadLetterSink(Protocol):
    def add_many(self, letters: Sequence[tuple[str, str, Any]]) -> None: ...


@dataclass
class BatchOutcome:
    records: int = 0
    dispatched: int = 0
    messages: int = 0
    dead_lettered: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    by_record: Counter[tuple[str, str]] = field(default_factory=Counter)  # (eventName, entity)
    by_event: Counter[str] = field(default_factory=Counter)  # dispatched event kinds


def _event_name(change: Mapping[str, Any]) -> str:
    """INSERT, MODIFY, REMOVE, or "unknown": a bounded label whatever the change holds."""
    name = change.get("eventName")
    return name if name in ("INSERT", "MODIFY", "REMOVE") else "unknown"


@dataclass
class Prepared:
    """A parsed batch waiting to be delivered."""

    source: str
    outcome: BatchOutcome
    events: list[Event] = field(default_factory=list)
    letters: list[tuple[str, str, Any]] = field(default_factory=list)
    letters_stored: bool = False


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
        outcome, name = prepared.outcome, "unknown"
        try:  # from the first read of the record on: nothing it holds may escape this
            change = unwrap_record(record)
            name = _event_name(change)
            parsed = parse_change(change, self.excluded_visibilities)
        except Exception as exc:  # RecordError, or a parser bug: either way the shard moves on
            reason = str(exc) if isinstance(exc, RecordError) else f"unexpected {type(exc).__name__}: {exc}"
            if not isinstance(exc, RecordError):
                log.exception("unexpected error parsing a record from %s", prepared.source)
            # A record too deep to parse may be too deep to serialize: the letter keeps what it can.
            prepared.letters.append((prepared.source, reason, clip_depth(record)))
            outcome.by_record[(name, "unparseable")] += 1
            return
        if isinstance(parsed, Ignored):
            outcome.ignored[parsed.entity] += 1
            outcome.by_record[(name, parsed.entity)] += 1
            return
        prepared.events.append(parsed)
        outcome.by_event[parsed.kind] += 1
        outcome.by_record[(name, "post" if parsed.kind.startswith("post") else "follow")] += 1

    def deliver(self, prepared: Prepared) -> None:
        """Dead letters first (once, however often a broker outage makes the caller retry),
        then the events."""
        if prepared.letters and not prepared.letters_stored:
            self.dead_letters.add_many(prepared.letters)
            prepared.letters_stored = True
            log.warning("dead-lettered %d records from %s: %s", len(prepared.letters), prepared.source,
                        prepared.letters[0][1])
        if prepared.events:
            prepared.outcome.messages = self.dispatcher.dispatch(prepared.events)
            if log.isEnabledFor(logging.DEBUG):
                for event in prepared.events:
                    post = getattr(event, "post", None)
                    log.debug("dispatched %s", event.kind, extra={
                        "event_id": event.meta.event_id, "shard": prepared.source, "post_id": post and post.post_id})
