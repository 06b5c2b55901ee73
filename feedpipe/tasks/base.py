"""Running a batch of event payloads inside one task, with per-event error handling.

Permanent errors (a payload or item that cannot be understood, a request DynamoDB rejects as
invalid) dead-letter that one event and the batch goes on. Transient errors (throttling,
connections, unprocessed items, a truth that kept changing) retry the rest of the batch with
capped exponential backoff and full jitter; after ``task_max_retries`` the rest is
dead-lettered with the last error as its reason. Nothing is dropped silently.

A batch also stops once it has run for ``task_budget_seconds`` (a quarter of the visibility
timeout): the rest goes on in a fresh message of the same task, published before this one is
acknowledged. On a Redis broker a message still unacknowledged after the visibility timeout is
delivered again while it runs, and a batch of big fan-outs that outlasted it would be redelivered
over and over, each copy doing the whole batch again. (A single fan-out hands its own walk on the
same way: ``feeds.fanout``.)

Every task is a ``FeedpipeTask``: it reaches its process's services (settings, stores, clients,
metrics) as ``self.services``, which its app owns (``worker.WorkerApp``); the functions here
take the task and use what it carries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from celery import Task
from celery.exceptions import Reject

from feedpipe.adapters.aws_errors import is_invalid_request
from feedpipe.config import Settings
from feedpipe.core.backoff import MAX_EXPONENT, full_jitter
from feedpipe.core.events import Event, PayloadError, event_from_payload
from feedpipe.core.letters import DeadLetter
from feedpipe.core.messages import attempted, mark_attempted
from feedpipe.core.records import RecordError
from feedpipe.services import Services

log = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 1
RETRY_MAX_SECONDS = 120


class ServicesOwner(Protocol):
    """What a task's app provides: this process's services."""

    @property
    def services(self) -> Services: ...


class FeedpipeTask(Task):  # type: ignore[misc]  # Celery's classes are untyped
    """The base of every feedpipe task (the worker app's ``task_cls``). Celery makes one instance
    of each task per process, so the services come from the app, shared by all its tasks and
    built in each process on first use."""

    @property
    def services(self) -> Services:
        owner: ServicesOwner = self.app
        return owner.services


class PermanentError(Exception):
    """An event that will fail the same way however often it is retried."""


def is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, PayloadError | RecordError | PermanentError):
        return True
    return is_invalid_request(exc)


Handler = Callable[[Event, dict[str, Any]], object]


def run_events(task: FeedpipeTask, payloads: Any, handle: Handler) -> None:
    """Handle each event payload in order; see the module doc for what happens on errors."""

    def handle_event(payload: Any) -> None:
        event = event_from_payload(payload)
        log.info("%s from record %s", event.kind, event.meta.event_id, extra=_ids(event))
        handle(event, payload)

    run_payloads(task, payloads, handle_event)


def run_payloads(task: FeedpipeTask, payloads: Any, handle: Callable[[Any], object]) -> None:
    """Handle each payload in order: a permanent error dead-letters that one and goes on, a
    transient one retries it and the rest. Handlers reach the stores inside the try: building
    them connects (a cluster's client, at once), and a Redis that is down then is a transient
    failure to retry, not a reason to drop the message."""
    if not isinstance(payloads, list):
        payloads = [payloads]
    services = task.services
    deadline = time.monotonic() + services.settings.task_budget_seconds
    for index, payload in enumerate(payloads):
        if index and time.monotonic() > deadline:
            with requeue_on_failure(services, "hand the rest of the batch on"):
                hand_on(task, payloads[index:])
            return
        try:
            handle(payload)
        except Exception as exc:
            if not is_permanent(exc):  # it may have written before it failed: its next run knows
                retry_rest(task, [mark_attempted(payload), *payloads[index + 1 :]], exc)
                return
            with requeue_on_failure(services, "dead-letter a payload"):
                services.stores.dead_letters.add(f"task:{task.name}", reason_of(exc), payload)
            log.warning("dead-lettered a payload of %s: %s", task.name, reason_of(exc))


@contextmanager
def requeue_on_failure(services: Services, what: str) -> Iterator[None]:
    """Where a failure would otherwise escape the task, which Celery then acknowledges (the
    message and whatever it still held gone, with no dead letter), put the message back on its
    queue instead: what it already did is idempotent. A requeued message comes straight back, so
    it first waits out a backoff that grows with the failures in a row (capped, full jitter):
    a dead-letter store that is down is then not hammered by a worker spinning on one message.
    The streak is the process's (``services``): a message put back is taken again by the same
    worker."""
    try:
        yield
    except Exception as exc:
        wait = round(full_jitter(RETRY_BASE_SECONDS, services.requeue_streak, longest_wait(services.settings)), 1)
        services.requeue_streak = min(services.requeue_streak + 1, MAX_EXPONENT)
        log.error("could not %s (%s); putting the message back in %ss", what, reason_of(exc), wait)
        time.sleep(wait)
        raise Reject(reason_of(exc), requeue=True) from None
    services.requeue_streak = 0


def hand_on(task: FeedpipeTask, rest: list[Any]) -> None:
    """Publish ``rest`` as a fresh message of ``task`` (its retries start again at 0)."""
    log.info("%s handing %d payloads on to a new message (batch budget spent)", task.name, len(rest))
    task.apply_async(args=[rest])


def retry_rest(task: FeedpipeTask, rest: list[Any], exc: Exception) -> None:
    """Retry ``rest`` later, or dead-letter it once retries run out."""
    services = task.services
    retries = task.request.retries
    limit = services.settings.task_max_retries
    if retries >= limit:
        reason = f"gave up after {retries} retries: {reason_of(exc)}"
        with requeue_on_failure(services, "dead-letter what retries could not do"):
            services.stores.dead_letters.add_many([DeadLetter(f"task:{task.name}", reason, p) for p in rest])
        log.error("%s: %s", task.name, reason)
        return
    # Whole seconds: RabbitMQ's native delayed delivery refuses a countdown under one second
    # (int(0.3) == 0), and the retry would then come straight back with no backoff.
    countdown = round(full_jitter(RETRY_BASE_SECONDS, retries, longest_wait(services.settings)))
    log.warning("%s retrying %d payloads in %ss: %s", task.name, len(rest), countdown, reason_of(exc))
    try:
        # max_retries=None would mean Celery's default of 3, after which the task fails and,
        # acked, drops ``rest`` without a dead letter: the limit is ours, checked above.
        raise task.retry(args=[rest], countdown=countdown, max_retries=limit, exc=exc)
    except Reject as rejected:
        # The retry could not be published (the broker is unreachable too): Celery would drop
        # the message. Put it back instead; what it already did is idempotent.
        raise Reject(rejected.reason, requeue=True) from None


def ran_before(task: FeedpipeTask, payload: Any) -> bool:
    """Whether this payload may have been started on before: a task started on it and retried
    or dead-lettered it (``core.messages.attempted``: the rest of a retried batch never ran),
    or the broker delivered its message again (kombu's Redis transport marks a message it
    restores unacknowledged, AMQP one a consumer left unacknowledged or rejected), which tells
    nothing of how far the batch got."""
    return attempted(payload) or bool((task.request.delivery_info or {}).get("redelivered"))


def longest_wait(settings: Settings) -> int:
    """The longest a retry or a backoff waits, in whole seconds: ``RETRY_MAX_SECONDS``, but never
    past the task budget. A countdown retry sits unacknowledged in the worker, and one outliving
    the visibility timeout would be delivered again while it waits, over and over."""
    return max(RETRY_BASE_SECONDS, min(RETRY_MAX_SECONDS, int(settings.task_budget_seconds)))


def _ids(event: Event) -> dict[str, str]:
    """The ids to follow an event by in the logs."""
    ids = {"event_id": event.meta.event_id}
    post = getattr(event, "post", None)
    if post is not None:
        ids["post_id"] = post.post_id
    else:
        ids["follower_id"], ids["followed_id"] = event.follower_id, event.followed_id  # type: ignore[union-attr]
    return ids


def reason_of(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
