"""The backfill's segment tasks: each builds a slice of its segment's users, then hands the
segment on to a fresh message until it is done (see ``feeds.backfill``)."""

from __future__ import annotations

from typing import Any

from celery import Task

from feedpipe import tasks
from feedpipe.adapters.backfill_progress import BackfillProgress
from feedpipe.feeds.backfill import backfill_segment
from feedpipe.runtime import runtime
from feedpipe.tasks.base import PermanentError, requeue_on_failure, run_payloads
from feedpipe.worker import app


def send_segment(total: int, segment: int) -> None:
    app.send_task(tasks.BACKFILL_SEGMENT, args=[[{"total": total, "segment": segment}]])


def _segment(payload: Any) -> tuple[int, int]:
    if not isinstance(payload, dict):
        raise PermanentError("backfill payload is not an object")
    total, segment = payload.get("total"), payload.get("segment")
    if not isinstance(total, int) or not isinstance(segment, int) or not 0 <= segment < total:
        raise PermanentError("backfill payload needs integers 0 <= segment < total")
    return total, segment


@app.task(name=tasks.BACKFILL_SEGMENT, bind=True)
def backfill_segment_task(self: Task, payloads: Any) -> None:
    """Errors as in ``tasks.base``: a transient one retries from the last page recorded."""

    def handle(payload: Any) -> None:
        total, segment = _segment(payload)
        rt = runtime()
        stores = rt.stores
        progress = BackfillProgress(rt.dynamodb, stores.settings.lease_table_name)
        step = backfill_segment(stores, progress, total, segment, stores.settings.task_budget_seconds)
        if not step.finished:
            with requeue_on_failure("hand the segment on"):
                send_segment(total, segment)

    run_payloads(self, payloads, handle)
