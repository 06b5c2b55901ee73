"""Regeneration tasks: the drain, run by ``feedpipe beat`` every few seconds on the ``regen``
queue, and the rebuilds it hands out in groups, which every worker takes a share of."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from celery import Task

from feedpipe import tasks
from feedpipe.feeds.regen import Rebuild, drain, rebuild_user
from feedpipe.runtime import runtime
from feedpipe.tasks.base import PermanentError, run_payloads
from feedpipe.worker import REGEN_QUEUE, app

log = logging.getLogger(__name__)

DRAIN_MAX_SECONDS = 30.0


def _hand_out(group: list[Rebuild]) -> None:
    payloads = [{"user_id": user_id, "durable": durable} for user_id, durable in group]
    app.send_task(tasks.REGEN_REBUILD, args=[payloads], queue=REGEN_QUEUE)


@app.task(name=tasks.REGEN_DRAIN, queue=REGEN_QUEUE)
def drain_regen_queue() -> dict[str, Any]:
    stores = runtime().stores
    # Well inside the visibility timeout, so a live drain is never redelivered; short even
    # when that timeout is long, so the next scheduled drain is not kept waiting.
    budget = min(DRAIN_MAX_SECONDS, stores.settings.task_budget_seconds)
    stats = drain(stores, stores.regen_queue, budget, hand_out=_hand_out)
    stores.metrics.regen_jobs.inc(stats.jobs)
    if stats.jobs or stats.recovered:
        log.info("regen drain: %s", stats)
    return asdict(stats)


def _rebuild(payload: Any) -> Rebuild:
    if not isinstance(payload, dict):
        raise PermanentError("rebuild payload is not an object")
    user_id, durable = payload.get("user_id"), payload.get("durable", False)
    if not isinstance(user_id, str) or not user_id or not isinstance(durable, bool):
        raise PermanentError("rebuild payload needs a user_id string and a durable flag")
    return user_id, durable


@app.task(name=tasks.REGEN_REBUILD, bind=True, queue=REGEN_QUEUE)
def rebuild_feeds(self: Task, payloads: Any) -> None:
    """Rebuild each user in ``payloads`` (errors handled as in ``tasks.base``)."""

    def handle(payload: Any) -> None:
        stores = runtime().stores
        rebuild_user(stores, *_rebuild(payload))
        stores.metrics.regen_rebuilds.inc()

    run_payloads(self, payloads, handle)
