"""The AWS Lambda entry point: a DynamoDB Streams or Kinesis event in, ``batchItemFailures`` out.

Configure the function with handler ``feedpipe.consumers.lambda_handler.handler`` and the event
source mapping with ``FunctionResponseTypes: [ReportBatchItemFailures]``; settings come from
``FEEDPIPE_*`` (and boto3's own) environment variables.

Records go through the same ``RecordPipeline`` as the shard consumer: an unparseable record is
dead-lettered with its reason (that is success: the shard keeps moving), the rest are published
in record order. The whole batch is published at once; only when that fails are the records
handled one at a time from the start, to find the first one that cannot be made durable. Its
sequence number is returned as the one ``itemIdentifier``, so Lambda retries from exactly that
record: every record before it was published once in this invocation, none after it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from feedpipe.config import Settings, load_settings
from feedpipe.consumers import build
from feedpipe.consumers.pipeline import DeadLetterSink, RecordCounts, RecordPipeline
from feedpipe.core.letters import DeadLetter
from feedpipe.core.records import record_sequence

log = logging.getLogger(__name__)

BatchResponse = dict[str, list[dict[str, str]]]
DEFAULT_SOURCE = "stream:lambda"


class EventShapeError(ValueError):
    """The invocation's event is not a stream event (no ``Records`` list)."""


@dataclass
class InvocationSummary(RecordCounts):
    failures: int = 0


@dataclass
class _RememberingSink:
    """Passes letters on and remembers which records' letters are durably stored, so the
    record-by-record retry after a failed batch publish does not dead-letter them twice.
    Records are told apart by identity: they are the event's own objects, alive all invocation."""

    inner: DeadLetterSink
    stored: set[int] = field(default_factory=set)

    def add_many(self, letters: Sequence[DeadLetter]) -> None:
        self.inner.add_many(letters)
        self.stored.update(id(record) for _, _, record in letters)


def process_event(event: Any, pipeline: RecordPipeline) -> BatchResponse:
    """Handle one Lambda stream event with ``pipeline``; the partial-batch response."""
    records = event_records(event)
    source = event_source(records)
    summary = InvocationSummary()
    sink = _RememberingSink(pipeline.dead_letters)
    remembering = replace(pipeline, dead_letters=sink)
    published = _handle_batch(remembering, records, source, summary)
    failed = None if published else _handle_one_by_one(remembering, sink, records, source, summary)
    failures = [] if failed is None else [{"itemIdentifier": _sequence(records[failed])}]
    summary.records = len(records)  # the invocation's, whichever pass handled them (or none)
    summary.failures = len(failures)
    log.info(
        "lambda batch from %s: %d records, %d dispatched in %d messages, %d dead-lettered, "
        "%d ignored, %d failures%s",
        source, summary.records, summary.dispatched, summary.messages, summary.dead_lettered,
        summary.ignored, summary.failures,
        f" (retry from {failures[0]['itemIdentifier']})" if failures else "",
    )
    return {"batchItemFailures": failures}


def event_records(event: Any) -> list[Any]:
    """The event's records; EventShapeError when it is not a stream event."""
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list):
        found = f"keys {sorted(map(str, event))[:5]}" if isinstance(event, Mapping) else type(event).__name__
        raise EventShapeError(f"not a DynamoDB Streams or Kinesis event: no 'Records' list (got {found})")
    return records


def event_source(records: Sequence[Any]) -> str:
    """The dead letters' source: ``stream:`` (so ``feedpipe dlq replay`` re-parses them) and
    the stream's ARN."""
    for record in records:
        if isinstance(record, Mapping) and isinstance(record.get("eventSourceARN"), str):
            return f"stream:{record['eventSourceARN']}"
    return DEFAULT_SOURCE


def _handle_batch(pipeline: RecordPipeline, records: list[Any], source: str, summary: InvocationSummary) -> bool:
    """Every record in one pass, so in as few publishes as the dispatcher can; whether it worked."""
    try:
        summary.add(pipeline.handle(records, source))
    except Exception as exc:  # whatever the cause, the record-by-record pass locates it
        log.warning("publishing the batch of %d records failed (%s); retrying record by record", len(records), exc)
        return False
    return True


def _handle_one_by_one(
    pipeline: RecordPipeline, sink: _RememberingSink, records: list[Any], source: str, summary: InvocationSummary
) -> int | None:
    """Records in order until one cannot be handled; its index, or None if all were."""
    for index, record in enumerate(records):
        if id(record) in sink.stored:
            summary.dead_lettered += 1  # its letter was stored by the failed batch pass
            continue
        try:
            summary.add(pipeline.handle([record], source))
        except Exception:
            log.exception("record %s cannot be handled; Lambda retries from it", _sequence(record))
            return index
    return None


def _sequence(record: Any) -> str:
    # An empty identifier makes Lambda retry the whole batch: right for a record with no position.
    return record_sequence(record) if isinstance(record, Mapping) else ""


# A Lambda container runs one invocation at a time and lives across many: its one legitimate
# global is the pipeline (settings, broker producer pool, Redis client), built on the first
# invocation rather than at import so a bad setting fails that invocation, not the import, and
# reused by every later one instead of reconnecting per batch.
_pipeline: RecordPipeline | None = None


def handler(event: Any, context: Any) -> BatchResponse:
    """The Lambda entry point. A bad setting raises ConfigError (its one-line message) on
    every invocation, so the batch is retried, never silently acknowledged."""
    return process_event(event, container_pipeline())


def container_pipeline() -> RecordPipeline:
    """This container's pipeline, built from the environment on first use."""
    global _pipeline
    if _pipeline is None:
        settings = load_settings()
        # Lambda's runtime owns the root handler (it tags lines with the request id); only
        # feedpipe's level is ours to set.
        logging.getLogger("feedpipe").setLevel(settings.log_level)
        _pipeline = build_pipeline(settings)
    return _pipeline


def build_pipeline(settings: Settings) -> RecordPipeline:
    """The pipeline, once the broker it publishes to is known to keep what it is given."""
    from feedpipe.adapters.redis_client import check_durable_broker

    check_durable_broker(settings)
    return build.build_pipeline(settings)


def reset_pipeline() -> None:
    """Forget the container's pipeline (tests)."""
    global _pipeline
    _pipeline = None
