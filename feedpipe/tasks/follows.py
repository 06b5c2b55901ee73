"""Follow and unfollow tasks: backfill on follow, unmerge on unfollow."""

from __future__ import annotations

from typing import Any

from celery import Task

from feedpipe import tasks
from feedpipe.core.events import Event, FollowEnded, FollowStarted
from feedpipe.feeds.follows import apply_follow, apply_unfollow
from feedpipe.runtime import runtime
from feedpipe.tasks.base import PermanentError, run_events
from feedpipe.worker import FOLLOWS_QUEUE, app


def _apply(event: Event, _: dict[str, Any]) -> None:
    stores = runtime().stores
    if isinstance(event, FollowStarted):
        apply_follow(stores, event.follower_id, event.followed_id)
    elif isinstance(event, FollowEnded):
        apply_unfollow(stores, event.follower_id, event.followed_id)
    else:
        raise PermanentError(f"expected a follow event, got {event.kind}")


@app.task(name=tasks.APPLY_FOLLOWS, bind=True, queue=FOLLOWS_QUEUE)
def apply_follows(self: Task, payloads: list[dict[str, Any]]) -> None:
    run_events(self, payloads, _apply)
