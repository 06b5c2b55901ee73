"""Follow and unfollow tasks: backfill on follow, unmerge on unfollow. Each follow is checked
again once GSI1 has caught up with it (``gsi_lag_seconds``); each unfollow once, besides, no
planner can still be writing to the follower from a page of followers read before it (a task
budget later): see README "Guarantees"."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

from feedpipe import tasks
from feedpipe.core.events import Event, FollowEnded, FollowStarted
from feedpipe.feeds.follows import apply_follow, apply_unfollow, recheck_follow, recheck_unfollow
from feedpipe.tasks.base import FeedpipeTask, PermanentError, run_events


def _apply(task: FeedpipeTask, event: Event, payload: dict[str, Any]) -> None:
    stores = task.services.stores
    if isinstance(event, FollowStarted):
        apply_follow(stores, event.follower_id, event.followed_id)
        _schedule_recheck(task, payload)
    elif isinstance(event, FollowEnded):
        apply_unfollow(stores, event.follower_id, event.followed_id)
        _schedule_unfollow_recheck(task, payload)
    else:
        raise PermanentError(f"expected a follow event, got {event.kind}")


def _schedule_recheck(task: FeedpipeTask, payload: dict[str, Any]) -> None:
    """Twice the lag bound: a post whose fan-out missed this follow was written before GSI1
    showed the follow, and GSI1 shows that post one bound later still."""
    lag = task.services.settings.gsi_lag_seconds
    if lag:  # a broker that refuses it fails this event, which is retried: backfills are idempotent
        _recheck_after(task, payload, 2 * lag)


def _schedule_unfollow_recheck(task: FeedpipeTask, payload: dict[str, Any]) -> None:
    """After twice the lag (a planner may read the old edge from GSI1 that long) and one task
    budget (how long a planner goes on writing to the followers of a page it read): by then a
    planner that wrote to this follower after the unmerge has settled that write, or died;
    the re-check takes out what a dead one left (``feeds.follows.recheck_unfollow``)."""
    settings = task.services.settings
    _recheck_after(task, payload, 2 * settings.gsi_lag_seconds + settings.task_budget_seconds)


def _recheck_after(task: FeedpipeTask, payload: dict[str, Any], seconds: float) -> None:
    # Whole seconds: Celery's native delayed delivery on RabbitMQ refuses a fraction under 1.
    task.app.send_task(tasks.RECHECK_FOLLOWS, args=[[payload]], countdown=math.ceil(seconds))


def _recheck(task: FeedpipeTask, event: Event, _: dict[str, Any]) -> None:
    if isinstance(event, FollowStarted):
        recheck_follow(task.services.stores, event.follower_id, event.followed_id)
    elif isinstance(event, FollowEnded):
        recheck_unfollow(task.services.stores, event.follower_id, event.followed_id)
    else:
        raise PermanentError(f"expected a follow event, got {event.kind}")


def apply_follows(self: FeedpipeTask, payloads: list[dict[str, Any]]) -> None:
    run_events(self, payloads, partial(_apply, self))


def recheck_follows(self: FeedpipeTask, payloads: list[dict[str, Any]]) -> None:
    run_events(self, payloads, partial(_recheck, self))


# The worker app runs each as a bound task of this name (``worker.WorkerApp``).
TASKS: dict[str, Callable[..., object]] = {
    tasks.APPLY_FOLLOWS: apply_follows,
    tasks.RECHECK_FOLLOWS: recheck_follows,
}
