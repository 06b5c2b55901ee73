"""Follow and unfollow tasks: backfill on follow, unmerge on unfollow, and each follow checked
again once GSI1 has caught up with it (``gsi_lag_seconds``; see README "Guarantees")."""

from __future__ import annotations

import math
from typing import Any

from celery import Task

from feedpipe import tasks
from feedpipe.core.events import Event, FollowEnded, FollowStarted
from feedpipe.feeds.follows import apply_follow, apply_unfollow, recheck_follow
from feedpipe.runtime import runtime
from feedpipe.tasks.base import PermanentError, run_events
from feedpipe.worker import app


def _apply(event: Event, payload: dict[str, Any]) -> None:
    stores = runtime().stores
    if isinstance(event, FollowStarted):
        apply_follow(stores, event.follower_id, event.followed_id)
        _schedule_recheck(payload)
    elif isinstance(event, FollowEnded):
        apply_unfollow(stores, event.follower_id, event.followed_id)
    else:
        raise PermanentError(f"expected a follow event, got {event.kind}")


def _schedule_recheck(payload: dict[str, Any]) -> None:
    """Twice the lag bound: a post whose fan-out missed this follow was written before GSI1
    showed the follow, and GSI1 shows that post one bound later still."""
    lag = runtime().settings.gsi_lag_seconds
    if lag:  # a broker that refuses it fails this event, which is retried: backfills are idempotent
        # Whole seconds: Celery's native delayed delivery on RabbitMQ refuses a fraction under 1.
        countdown = math.ceil(2 * lag)
        app.send_task(tasks.RECHECK_FOLLOWS, args=[[payload]], countdown=countdown)


def _recheck(event: Event, _: dict[str, Any]) -> None:
    if not isinstance(event, FollowStarted):
        raise PermanentError(f"expected a follow, got {event.kind}")
    recheck_follow(runtime().stores, event.follower_id, event.followed_id)


@app.task(name=tasks.APPLY_FOLLOWS, bind=True)
def apply_follows(self: Task, payloads: list[dict[str, Any]]) -> None:
    run_events(self, payloads, _apply)


@app.task(name=tasks.RECHECK_FOLLOWS, bind=True)
def recheck_follows(self: Task, payloads: list[dict[str, Any]]) -> None:
    run_events(self, payloads, _recheck)
