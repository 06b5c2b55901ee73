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

from feedpipe.core.events import Event, Ignored
from feedpipe.core.records import RecordError, parse_record, unwrap_record

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def dispatch(self, events: Sequence[Event]) -> int: ...


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


def _event_name(record: Any) -> str:
    """INSERT, MODIFY, REMOVE, or "unknown": a bounded label whatever the record holds."""
    try:
        name = unwrap_record(record).get("eventName")
    except RecordError:
        return "unknown"
    return name if name in ("INSERT", "MODIFY", "REMOVE") else "unknown"


@dataclass
class RecordPipeline:
    dispatcher: Dispatcher
    dead_letters: DeadLetterSink
    excluded_visibilities: Collection[str]

    def handle(self, records: Sequence[dict[str, Any]], source: str) -> BatchOutcome:
        """Parse every record; publish the events and dead-letter the rest. Raises only when
        the broker or the dead-letter store cannot take them (nothing is then acknowledged)."""
        outcome = BatchOutcome(records=len(records))
        events: list[Event] = []
        letters: list[tuple[str, str, Any]] = []
        for record in records:
            try:
                parsed = parse_record(record, self.excluded_visibilities)
            except RecordError as exc:
                letters.append((source, str(exc), record))
                outcome.by_record[(_event_name(record), "unparseable")] += 1
                continue
            if isinstance(parsed, Ignored):
                outcome.ignored[parsed.entity] += 1
                outcome.by_record[(_event_name(record), parsed.entity)] += 1
            else:
                events.append(parsed)
                outcome.by_event[parsed.kind] += 1
                entity = "post" if parsed.kind.startswith("post") else "follow"
                outcome.by_record[(_event_name(record), entity)] += 1
        if letters:
            self.dead_letters.add_many(letters)
            log.warning("dead-lettered %d records from %s: %s", len(letters), source, letters[0][1])
        if events:
            outcome.messages = self.dispatcher.dispatch(events)
            if log.isEnabledFor(logging.DEBUG):
                for event in events:
                    post = getattr(event, "post", None)
                    log.debug("dispatched %s", event.kind, extra={
                        "event_id": event.meta.event_id, "shard": source, "post_id": post and post.post_id})
        outcome.dispatched = len(events)
        outcome.dead_lettered = len(letters)
        return outcome
