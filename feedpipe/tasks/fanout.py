"""Fan-out and retraction tasks. A batch task plans each post; full chunks of followers go to
chunk tasks on the same queue, so one huge audience spreads over every worker, and a walk of the
followers that spends the task's budget goes on in a fresh planner message (``"resume"``)."""

from __future__ import annotations

from typing import Any, TypeGuard, TypeVar

from celery import Task

from feedpipe import tasks
from feedpipe.core.events import Event, PostPublished, PostRetracted, to_payload
from feedpipe.core.items import Key
from feedpipe.feeds import fanout
from feedpipe.feeds.fanout import Resume
from feedpipe.runtime import runtime
from feedpipe.tasks.base import PermanentError, run_events
from feedpipe.worker import app

E = TypeVar("E", PostPublished, PostRetracted)


def _hand_out(task_name: str, event: Event):  # type: ignore[no-untyped-def]
    payload = to_payload(event)

    def send(followers: list[str]) -> None:
        app.send_task(task_name, args=[[{**payload, "followers": followers}]])

    return send


def _hand_on(task_name: str, payload: dict[str, Any]):  # type: ignore[no-untyped-def]
    def send(resume: Resume) -> None:
        app.send_task(task_name, args=[[{**payload, "resume": {"start": resume.start, "walked": resume.walked}}]])

    return send


def _resume(payload: dict[str, Any]) -> Resume | None:
    """Where an earlier planner stopped its walk; PermanentError when it cannot be read."""
    found = payload.get("resume")
    if found is None:
        return None
    start, walked = (found.get("start"), found.get("walked")) if isinstance(found, dict) else (None, None)
    if not _is_key(start) or type(walked) is not int or walked < 0:
        raise PermanentError("resume needs a start key and a count of followers walked")
    return Resume(start, walked)


def _is_key(value: Any) -> TypeGuard[Key]:
    """A DynamoDB key as LastEvaluatedKey gives it: names to ``{"S": "..."}``."""
    return isinstance(value, dict) and bool(value) and all(
        isinstance(name, str) and isinstance(typed, dict) and len(typed) == 1
        and all(isinstance(t, str) and isinstance(v, str) for t, v in typed.items())
        for name, typed in value.items()
    )


def _followers(payload: dict[str, Any]) -> list[str]:
    followers = payload.get("followers")
    if not isinstance(followers, list) or not all(isinstance(f, str) for f in followers):
        raise PermanentError("chunk payload has no list of follower ids")
    return followers


def _expect(event: Event, cls: type[E]) -> E:
    if not isinstance(event, cls):
        raise PermanentError(f"expected {cls.kind}, got {event.kind}")
    return event


@app.task(name=tasks.FANOUT_POSTS, bind=True)
def fan_out_posts(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        post = _expect(event, PostPublished).post
        hand_out = _hand_out(tasks.FANOUT_CHUNK, event)
        hand_on = _hand_on(tasks.FANOUT_POSTS, to_payload(event))
        fanout.fan_out_post(runtime().stores, post, hand_out, _resume(payload), hand_on)

    run_events(self, payloads, handle)


@app.task(name=tasks.FANOUT_CHUNK, bind=True)
def deliver_chunk(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        fanout.deliver_chunk(runtime().stores, _expect(event, PostPublished).post, _followers(payload))

    run_events(self, payloads, handle)


@app.task(name=tasks.RETRACT_POSTS, bind=True)
def retract_posts(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        post = _expect(event, PostRetracted).post
        hand_out = _hand_out(tasks.RETRACT_CHUNK, event)
        hand_on = _hand_on(tasks.RETRACT_POSTS, to_payload(event))
        fanout.retract_post(runtime().stores, post, hand_out, _resume(payload), hand_on)

    run_events(self, payloads, handle)


@app.task(name=tasks.RETRACT_CHUNK, bind=True)
def retract_chunk(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        fanout.retract_chunk(runtime().stores, _expect(event, PostRetracted).post, _followers(payload))

    run_events(self, payloads, handle)
