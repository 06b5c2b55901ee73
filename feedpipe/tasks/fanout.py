"""Fan-out and retraction tasks. A batch task plans each post; full chunks of followers go to
chunk tasks on the same queue, so one huge audience spreads over every worker, and a walk of the
followers that spends the task's budget goes on in a fresh planner message (``"resume"``)."""

from __future__ import annotations

from typing import Any, TypeVar

from celery import Task

from feedpipe import tasks
from feedpipe.core.events import Event, PostPublished, PostRetracted
from feedpipe.core.messages import Resume, chunk_payload, followers_of, resume_of, resume_payload
from feedpipe.feeds import fanout
from feedpipe.runtime import runtime
from feedpipe.tasks.base import PermanentError, run_events
from feedpipe.worker import app

E = TypeVar("E", PostPublished, PostRetracted)


def _hand_out(task_name: str, event: PostPublished | PostRetracted) -> fanout.HandOut:
    def send(followers: list[str]) -> None:
        app.send_task(task_name, args=[[chunk_payload(event, followers)]])

    return send


def _hand_on(task_name: str, event: PostPublished | PostRetracted) -> fanout.HandOn:
    def send(resume: Resume) -> None:
        app.send_task(task_name, args=[[resume_payload(event, resume)]])

    return send


def _expect(event: Event, cls: type[E]) -> E:
    if not isinstance(event, cls):
        raise PermanentError(f"expected {cls.kind}, got {event.kind}")
    return event


@app.task(name=tasks.FANOUT_POSTS, bind=True)
def fan_out_posts(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        published = _expect(event, PostPublished)
        hand_out, hand_on = _hand_out(tasks.FANOUT_CHUNK, published), _hand_on(tasks.FANOUT_POSTS, published)
        fanout.fan_out_post(runtime().stores, published.post, hand_out, resume_of(payload), hand_on)

    run_events(self, payloads, handle)


@app.task(name=tasks.FANOUT_CHUNK, bind=True)
def deliver_chunk(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        fanout.deliver_chunk(runtime().stores, _expect(event, PostPublished).post, followers_of(payload))

    run_events(self, payloads, handle)


@app.task(name=tasks.RETRACT_POSTS, bind=True)
def retract_posts(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        retracted = _expect(event, PostRetracted)
        hand_out, hand_on = _hand_out(tasks.RETRACT_CHUNK, retracted), _hand_on(tasks.RETRACT_POSTS, retracted)
        fanout.retract_post(runtime().stores, retracted.post, hand_out, resume_of(payload), hand_on)

    run_events(self, payloads, handle)


@app.task(name=tasks.RETRACT_CHUNK, bind=True)
def retract_chunk(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        fanout.retract_chunk(runtime().stores, _expect(event, PostRetracted).post, followers_of(payload))

    run_events(self, payloads, handle)
