"""Every Prometheus metric feedpipe exports, defined in one place.

Names follow Prometheus conventions (``feedpipe_`` prefix, base units, ``_total`` counters);
label values come from small fixed sets (task names, outcomes, stores, event kinds, shard ids),
never from ids or free text. The dashboards and alerts in ``deploy/`` use only these names, and
a test holds them to it.

Nothing is registered at import: a process builds its ``Metrics`` once at start. A prefork
worker runs prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set up by
``feedpipe.worker`` before any metric exists), so children's values add up on ``/metrics``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from feedpipe.adapters.aws_errors import THROTTLING_CODES
from feedpipe.core.catalog import TASK_QUEUES

DYNAMODB_OPERATIONS = ("BatchWriteItem", "BatchGetItem", "GetItem", "Query", "Scan", "UpdateItem", "PutItem")
TASK_NAMES = tuple(TASK_QUEUES)  # every task of the catalog: the labels are pre-created at zero
CRASH_REPAIR_KINDS = ("sweep", "unfollow_recheck")  # feedpipe_crash_repairs_total{kind}
AUDIT_KINDS = ("missing", "extra", "stale", "over_long", "missing_ttl")  # feeds/audit.py's KINDS
AUDIT_STORES = ("dynamodb", "redis")
DEAD_LETTER_LABELS = (
    ("stream", "unparseable_record"), ("stream", "trimmed_gap"), ("task", "permanent_error"),
    ("task", "retries_exhausted"), ("regen", "bad_job"),
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
FANOUT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
AUDIENCE_BUCKETS = (0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000)


@dataclass
class Metrics:
    """The metric objects of one process (or one prefork child)."""

    records: Counter
    events_dispatched: Counter
    messages_published: Counter
    dead_letters: Counter
    dead_letters_dropped: Counter
    stream_read_seconds: Histogram
    consumer_lag_seconds: Gauge
    checkpoint_age_seconds: Gauge
    checkpoints: Counter
    leases_held: Gauge
    tasks: Counter
    task_seconds: Histogram
    task_retries: Counter
    feed_items_written: Counter
    feed_items_removed: Counter
    unprocessed_items: Counter
    throttles: Counter
    fanout_latency_seconds: Histogram
    fanout_warm_latency_seconds: Histogram
    fanout_followers: Histogram
    crash_repairs: Counter
    regen_jobs: Counter
    regen_rebuilds: Counter
    fanout_on_read_posts: Counter
    author_posts_rebuilds: Counter
    audit_users: Counter
    audit_drift_items: Counter
    audit_repairs: Counter
    backfill_users: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> Metrics:
        """Build every metric, registered on ``registry`` (None: multiprocess files only), with
        the known label sets at zero, so rates and alerts have a series before the first event."""
        metrics = cls._build({"registry": registry})
        for operation in DYNAMODB_OPERATIONS:
            metrics.throttles.labels(operation)
        for task in TASK_NAMES:
            metrics.task_retries.labels(task)
            metrics.tasks.labels(task, "success")
            metrics.tasks.labels(task, "failure")
        for store in ("dynamodb", "redis"):
            metrics.feed_items_written.labels(store)
            metrics.feed_items_removed.labels(store)
        for source, reason in DEAD_LETTER_LABELS:
            metrics.dead_letters.labels(source, reason)
            metrics.dead_letters_dropped.labels(source)
        for kind in AUDIT_KINDS:
            for store in AUDIT_STORES:
                metrics.audit_drift_items.labels(kind, store)
        for kind in CRASH_REPAIR_KINDS:
            metrics.crash_repairs.labels(kind)
        return metrics

    @classmethod
    def _build(cls, r: dict[str, Any]) -> Metrics:
        return cls(
            records=Counter("feedpipe_stream_records_total", "Stream records read, by source, event and entity",
                            ["source", "event", "entity"], **r),
            events_dispatched=Counter("feedpipe_events_dispatched_total", "Events published as tasks, by kind",
                                      ["kind"], **r),
            messages_published=Counter("feedpipe_messages_published_total", "Celery messages published", **r),
            dead_letters=Counter("feedpipe_dead_letters_total", "Dead letters written, by where and why",
                                 ["source", "reason"], **r),
            dead_letters_dropped=Counter("feedpipe_dead_letters_dropped_total",
                                         "Dead letters refused because the store was full (logged at ERROR)",
                                         ["source"], **r),
            stream_read_seconds=Histogram("feedpipe_stream_read_seconds", "GetRecords call time",
                                          buckets=LATENCY_BUCKETS, **r),
            consumer_lag_seconds=Gauge("feedpipe_consumer_lag_seconds",
                                       "Age of the last record read from a shard", ["shard"], **r),
            checkpoint_age_seconds=Gauge("feedpipe_checkpoint_age_seconds",
                                         "Seconds since a held shard's checkpoint last moved", ["shard"], **r),
            checkpoints=Counter("feedpipe_checkpoints_total", "Checkpoints written", **r),
            leases_held=Gauge("feedpipe_leases_held", "Shard leases this consumer holds", **r),
            tasks=Counter("feedpipe_tasks_total", "Tasks finished, by task and outcome", ["task", "outcome"], **r),
            task_seconds=Histogram("feedpipe_task_duration_seconds", "Task run time", ["task"],
                                   buckets=LATENCY_BUCKETS, **r),
            task_retries=Counter("feedpipe_task_retries_total", "Task retries scheduled", ["task"], **r),
            feed_items_written=Counter("feedpipe_feed_items_written_total", "Feed items written, by store",
                                       ["store"], **r),
            feed_items_removed=Counter("feedpipe_feed_items_removed_total", "Feed items removed, by store",
                                       ["store"], **r),
            unprocessed_items=Counter("feedpipe_dynamodb_unprocessed_items_total",
                                      "Writes BatchWriteItem left unprocessed (retried)", **r),
            throttles=Counter("feedpipe_dynamodb_throttles_total", "DynamoDB throttling errors, by operation",
                              ["operation"], **r),
            fanout_latency_seconds=Histogram("feedpipe_fanout_latency_seconds",
                                             "From a post's creation to a chunk of its followers written",
                                             buckets=FANOUT_BUCKETS, **r),
            fanout_warm_latency_seconds=Histogram(
                "feedpipe_fanout_warm_latency_seconds",
                "From a post's creation to a handed-out chunk of its followers' warm Redis feeds written "
                "(before the chunk's durable writes)", buckets=FANOUT_BUCKETS, **r),
            fanout_followers=Histogram("feedpipe_fanout_followers",
                                       "Followers per fanned-out post (per walk segment when the walk was split)",
                                       buckets=AUDIENCE_BUCKETS, **r),
            crash_repairs=Counter("feedpipe_crash_repairs_total",
                                  "Writes of a task that died which a later task took back out, by kind: a fan-out "
                                  "planner's second attempt sweeping a deleted post, an unfollow's re-check",
                                  ["kind"], **r),
            regen_jobs=Counter("feedpipe_regen_jobs_total", "Regeneration jobs taken from the queue", **r),
            regen_rebuilds=Counter("feedpipe_regen_rebuilds_total",
                                   "Feeds rebuilt for feed_regen_queue jobs (after coalescing)", **r),
            fanout_on_read_posts=Counter("feedpipe_fanout_on_read_posts_total",
                                         "Posts of huge authors served by fan-out-on-read (kept in their "
                                         "author's list, not written to each follower)", **r),
            author_posts_rebuilds=Counter("feedpipe_author_posts_rebuilds_total",
                                          "Huge authors' post lists rebuilt from the table (missing from Redis)",
                                          **r),
            audit_users=Counter("feedpipe_audit_users_total", "Users whose feeds the audit compared with the table",
                                **r),
            audit_drift_items=Counter("feedpipe_audit_drift_items_total",
                                      "Drift the audit found (seen twice), by kind and store", ["kind", "store"], **r),
            audit_repairs=Counter("feedpipe_audit_repairs_total", "Drift items the audit repaired", **r),
            backfill_users=Counter("feedpipe_backfill_users_total", "Users whose feeds the backfill built", **r),
        )


class QueueDepths(Collector):
    """Redis-side depths, read at scrape time: regen queue, processing lists, dead letters,
    and the Celery queues."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depths = self.read()
        family = GaugeMetricFamily("feedpipe_queue_depth", "Items waiting in a Redis list", labels=["queue"])
        for queue, depth in sorted(depths.items()):
            family.add_metric([queue], depth)
        yield family


_NOOP: Metrics | None = None


def noop_metrics() -> Metrics:
    """Metrics on a private registry nobody serves: for code paths run outside a served process."""
    global _NOOP
    if _NOOP is None:
        _NOOP = Metrics.create(CollectorRegistry())
    return _NOOP


def prepare_multiprocess_dir(path: Path) -> None:
    """A fresh directory for prefork children's metric files (stale files from an earlier run
    would be added in)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    # prometheus-client picks its value store when first imported; pick again, so every metric
    # created from now on (in the children) writes to the shared directory.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def multiprocess_registry() -> CollectorRegistry:
    """The aggregate of every prefork child's metrics, for the worker's ``/metrics``."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def in_multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def dead_letter_labels(source: str, reason: str) -> tuple[str, str]:
    """A dead letter's (source, reason) as bounded label values."""
    kind = source.split(":", 1)[0]
    if reason.startswith("gave up after"):
        return kind, "retries_exhausted"
    if reason.startswith("gap:"):
        return kind, "trimmed_gap"
    return kind, {"stream": "unparseable_record", "task": "permanent_error", "regen": "bad_job"}.get(kind, "other")


def count_throttles(client: Any, metrics: Metrics) -> None:
    """Count every throttled attempt of ``client`` (botocore retries them itself)."""

    def on_retry(response: Any = None, operation: Any = None, **_: Any) -> None:
        if response and response[1].get("Error", {}).get("Code") in THROTTLING_CODES:
            metrics.throttles.labels(getattr(operation, "name", "unknown")).inc()

    client.meta.events.register(f"needs-retry.{client.meta.service_model.endpoint_prefix}", on_retry)
