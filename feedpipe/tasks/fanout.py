"""Fan-out and retraction tasks. A batch task plans each post; full chunks of followers go to
chunk tasks, so one huge audience spreads over every worker; a walk of the followers that spends
the task's budget goes on in a fresh planner message (``"resume"``), and a walk split in two
hands its upper segment to a new planner message (``"segment"``). Fan-out chunks have a queue of
their own (``core.catalog``): a planner, which writes warm feeds first, never waits behind the
durable writes of chunks. A fan-out planner's message that ran before is given a retraction's
hand-offs, for the sweep ``feeds.fanout`` makes when its post is gone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from feedpipe import tasks
from feedpipe.core.events import Event, PostPublished, PostRetracted
from feedpipe.core.follower_segments import Segment
from feedpipe.core.messages import (
    Resume,
    chunk_payload,
    followers_of,
    resume_of,
    resume_payload,
    segment_of,
    segment_payload,
)
from feedpipe.feeds import fanout
from feedpipe.tasks.base import FeedpipeTask, PermanentError, ran_before, run_events

E = TypeVar("E", PostPublished, PostRetracted)


def _hand_out(task: FeedpipeTask, task_name: str, event: PostPublished | PostRetracted) -> fanout.HandOut:
    def send(followers: list[str]) -> None:
        task.app.send_task(task_name, args=[[chunk_payload(event, followers)]])

    return send


def _hand_on(task: FeedpipeTask, task_name: str, event: PostPublished | PostRetracted) -> fanout.HandOn:
    def send(resume: Resume) -> None:
        task.app.send_task(task_name, args=[[resume_payload(event, resume)]])

    return send


def _split(task: FeedpipeTask, task_name: str, event: PostPublished | PostRetracted) -> fanout.Split:
    def send(segment: Segment) -> None:
        task.app.send_task(task_name, args=[[segment_payload(event, segment)]])

    return send


def _retraction(task: FeedpipeTask, published: PostPublished) -> fanout.Handoffs:
    """How a retraction of the published post hands its work out: to the retraction tasks."""
    retracted = PostRetracted(published.post, published.meta)
    return fanout.Handoffs(_hand_out(task, tasks.RETRACT_CHUNK, retracted),
                           _hand_on(task, tasks.RETRACT_POSTS, retracted), _split(task, tasks.RETRACT_POSTS, retracted))


def _expect(event: Event, cls: type[E]) -> E:
    if not isinstance(event, cls):
        raise PermanentError(f"expected {cls.kind}, got {event.kind}")
    return event


def fan_out_posts(self: FeedpipeTask, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        published = _expect(event, PostPublished)
        hand_out = _hand_out(self, tasks.FANOUT_CHUNK, published)
        hand_on = _hand_on(self, tasks.FANOUT_POSTS, published)
        split = _split(self, tasks.FANOUT_POSTS, published)
        sweep = _retraction(self, published) if ran_before(self, payload) else None
        fanout.fan_out_post(self.services.stores, published.post, hand_out, resume_of(payload), hand_on,
                            segment_of(payload), split, sweep)

    run_events(self, payloads, handle)


def deliver_chunk(self: FeedpipeTask, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        fanout.deliver_chunk(self.services.stores, _expect(event, PostPublished).post, followers_of(payload))

    run_events(self, payloads, handle)


def retract_posts(self: FeedpipeTask, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        retracted = _expect(event, PostRetracted)
        hand_out = _hand_out(self, tasks.RETRACT_CHUNK, retracted)
        hand_on = _hand_on(self, tasks.RETRACT_POSTS, retracted)
        split = _split(self, tasks.RETRACT_POSTS, retracted)
        fanout.retract_post(self.services.stores, retracted.post, hand_out, resume_of(payload), hand_on,
                            segment_of(payload), split)

    run_events(self, payloads, handle)


def retract_chunk(self: FeedpipeTask, payloads: list[dict[str, Any]]) -> None:
    def handle(event: Event, payload: dict[str, Any]) -> None:
        fanout.retract_chunk(self.services.stores, _expect(event, PostRetracted).post, followers_of(payload))

    run_events(self, payloads, handle)


# The worker app runs each as a bound task of this name (``worker.WorkerApp``).
TASKS: dict[str, Callable[..., object]] = {
    tasks.FANOUT_POSTS: fan_out_posts,
    tasks.FANOUT_CHUNK: deliver_chunk,
    tasks.RETRACT_POSTS: retract_posts,
    tasks.RETRACT_CHUNK: retract_chunk,
}
