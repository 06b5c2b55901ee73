"""Regeneration tasks: the drain, run by ``feedpipe beat`` every few seconds on the ``regen``
queue, and the rebuilds it hands out in groups, which every worker takes a share of."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from feedpipe import tasks
from feedpipe.feeds.rebuild import HandOnRebuild, RebuildResume
from feedpipe.feeds.regen import HandOut, Rebuild, drain, rebuild_user
from feedpipe.tasks.base import FeedpipeTask, PermanentError, run_payloads

log = logging.getLogger(__name__)

DRAIN_MAX_SECONDS = 30.0


def _hand_out(task: FeedpipeTask) -> HandOut:
    def send(group: list[Rebuild]) -> None:
        payloads = [{"user_id": user_id, "durable": durable} for user_id, durable in group]
        task.app.send_task(tasks.REGEN_REBUILD, args=[payloads])

    return send


def drain_regen_queue(self: FeedpipeTask) -> dict[str, Any]:
    stores = self.services.stores
    # Well inside the visibility timeout, so a live drain is never redelivered; short even
    # when that timeout is long, so the next scheduled drain is not kept waiting.
    budget = min(DRAIN_MAX_SECONDS, stores.settings.task_budget_seconds)
    stats = drain(stores, stores.regen_queue, budget, hand_out=_hand_out(self))
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


def _resume(payload: dict[str, Any]) -> RebuildResume | None:
    """Where an earlier task stopped a durable rebuild; PermanentError when it cannot be read."""
    found = payload.get("resume")
    if found is None:
        return None
    step, after = (found.get("step"), found.get("after")) if isinstance(found, dict) else (None, None)
    if type(step) is not int or not 0 <= step <= 2 or not isinstance(after, str):
        raise PermanentError("resume needs a step (0 to 2) and the last author done")
    return RebuildResume(step, after)


def _hand_on(task: FeedpipeTask, user_id: str) -> HandOnRebuild:
    def send(resume: RebuildResume) -> None:
        payload = {"user_id": user_id, "durable": True, "resume": {"step": resume.step, "after": resume.after}}
        task.app.send_task(tasks.REGEN_REBUILD, args=[[payload]])

    return send


def rebuild_feeds(self: FeedpipeTask, payloads: Any) -> None:
    """Rebuild each user in ``payloads`` (errors handled as in ``tasks.base``); a durable
    rebuild over budget goes on in a fresh message (``"resume"``)."""

    def handle(payload: Any) -> None:
        stores = self.services.stores
        user_id, durable = _rebuild(payload)
        if rebuild_user(stores, user_id, durable, _resume(payload), _hand_on(self, user_id)):
            stores.metrics.regen_rebuilds.inc()

    run_payloads(self, payloads, handle)


# The worker app runs each as a bound task of this name (``worker.WorkerApp``).
TASKS: dict[str, Callable[..., object]] = {
    tasks.REGEN_DRAIN: drain_regen_queue,
    tasks.REGEN_REBUILD: rebuild_feeds,
}
