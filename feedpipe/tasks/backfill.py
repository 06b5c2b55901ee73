"""The backfill's segment tasks: each builds a slice of its segment's users, then hands the
segment on to a fresh message until it is done (see ``feeds.backfill``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

from feedpipe import tasks
from feedpipe.feeds.backfill import backfill_segment
from feedpipe.tasks.base import FeedpipeTask, PermanentError, requeue_on_failure, run_payloads


def send_segment(app: Celery, total: int, segment: int) -> None:
    """Publish a segment's task through ``app`` (any feedpipe app: the catalog routes it)."""
    app.send_task(tasks.BACKFILL_SEGMENT, args=[[{"total": total, "segment": segment}]])


def _segment(payload: Any) -> tuple[int, int]:
    if not isinstance(payload, dict):
        raise PermanentError("backfill payload is not an object")
    total, segment = payload.get("total"), payload.get("segment")
    if not isinstance(total, int) or not isinstance(segment, int) or not 0 <= segment < total:
        raise PermanentError("backfill payload needs integers 0 <= segment < total")
    return total, segment


def backfill_segment_task(self: FeedpipeTask, payloads: Any) -> None:
    """Errors as in ``tasks.base``: a transient one retries from the last page recorded."""

    def handle(payload: Any) -> None:
        total, segment = _segment(payload)
        services = self.services
        stores = services.stores
        step = backfill_segment(stores, total, segment, stores.settings.task_budget_seconds)
        if not step.finished:
            with requeue_on_failure(services, "hand the segment on"):
                send_segment(self.app, total, segment)

    run_payloads(self, payloads, handle)


# The worker app runs it as a bound task of this name (``worker.WorkerApp``).
TASKS: dict[str, Callable[..., object]] = {tasks.BACKFILL_SEGMENT: backfill_segment_task}
