"""Fan-out and retraction tasks. A batch task plans each post; full chunks of followers go to
chunk tasks on the same queue, so one huge audience spreads over every worker."""

from __future__ import annotations

from typing import Any, TypeVar

from celery import Task

from feedpipe import tasks
from feedpipe.core.events import Event, PostPublished, PostRetracted, to_payload
from feedpipe.feeds import fanout
from feedpipe.runtime import runtime
from feedpipe.tasks.base import PermanentError, run_events
from feedpipe.worker import FANOUT_QUEUE, RETRACT_QUEUE, app

E = TypeVar("E", PostPublished, PostRetracted)


def _hand_out(task_name: str, queue: str, event: Event):  # type: ignore[no-untyped-def]
    payload = to_payload(event)

    def send(followers: list[str]) -> None:
        app.send_task(task_name, args=[[{**payload, "followers": followers}]], queue=queue)

    return send


def _followers(payload: dict[str, Any]) -> list[str]:
    followers = payload.get("followers")
    if not isinstance(followers, list) or not all(isinstance(f, str) for f in followers):
        raise PermanentError("chunk payload has no list of follower ids")
    return followers


def _expect(event: Event, cls: type[E]) -> E:
    if not isinstance(event, cls):
        raise PermanentError(f"expected {cls.kind}, got {event.kind}")
    return event


@app.task(name=tasks.FANOUT_POSTS, bind=True, queue=FANOUT_QUEUE)
def fan_out_posts(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, _: dict[str, Any]) -> None:
        post = _expect(event, PostPublished).post
        hand_out = _hand_out(tasks.FANOUT_CHUNK, FANOUT_QUEUE, event)
        fanout.fan_out_post(runtime().stores, post, hand_out)

    run_events(self, payloads, handle)


@app.task(name=tasks.FANOUT_CHUNK, bind=True, queue=FANOUT_QUEUE)
def deliver_chunk(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        fanout.deliver_chunk(runtime().stores, _expect(event, PostPublished).post, _followers(payload))

    run_events(self, payloads, handle)


@app.task(name=tasks.RETRACT_POSTS, bind=True, queue=RETRACT_QUEUE)
def retract_posts(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, _: dict[str, Any]) -> None:
        post = _expect(event, PostRetracted).post
        hand_out = _hand_out(tasks.RETRACT_CHUNK, RETRACT_QUEUE, event)
        fanout.retract_post(runtime().stores, post, hand_out)

    run_events(self, payloads, handle)


@app.task(name=tasks.RETRACT_CHUNK, bind=True, queue=RETRACT_QUEUE)
def retract_chunk(self: Task, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        fanout.retract_chunk(runtime().stores, _expect(event, PostRetracted).post, _followers(payload))

    run_events(self, payloads, handle)
