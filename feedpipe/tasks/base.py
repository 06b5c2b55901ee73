"""Running a batch of event payloads inside one task, with per-event error handling.

Permanent errors (a payload or item that cannot be understood, a request DynamoDB rejects as
invalid) dead-letter that one event and the batch goes on. Transient errors (throttling,
connections, unprocessed items, a truth that kept changing) retry the rest of the batch with
capped exponential backoff and full jitter; after ``task_max_retries`` the rest is
dead-lettered with the last error as its reason. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError
from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from feedpipe.core.events import Event, PayloadError, event_from_payload
from feedpipe.core.records import RecordError
from feedpipe.runtime import runtime

log = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 1
RETRY_MAX_SECONDS = 120
_INVALID_REQUEST_CODES = frozenset({"ValidationException", "SerializationException"})


class PermanentError(Exception):
    """An event that will fail the same way however often it is retried."""


def is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, PayloadError | RecordError | PermanentError):
        return True
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code") in _INVALID_REQUEST_CODES
    return False


Handler = Callable[[Event, dict[str, Any]], object]


def run_events(task: Task, payloads: Any, handle: Handler) -> None:
    """Handle each event payload in order; see the module doc for what happens on errors."""
    if not isinstance(payloads, list):
        payloads = [payloads]
    for index, payload in enumerate(payloads):
        if not run_one(task, payload, handle, payloads[index:]):
            return


def run_one(task: Task, payload: Any, handle: Handler, rest: list[Any]) -> bool:
    """Handle one payload; False when the task retried (or gave up on) ``rest``. The stores are
    reached inside the try: building them connects (a cluster's client, at once), and a Redis
    that is down then is a transient failure to retry, not a reason to drop the message."""
    try:
        event = event_from_payload(payload)
        log.info("%s from record %s", event.kind, event.meta.event_id, extra=_ids(event))
        handle(event, payload)
        return True
    except Exception as exc:
        if is_permanent(exc):
            runtime().stores.dead_letters.add(f"task:{task.name}", _reason(exc), payload)
            log.warning("dead-lettered event from %s: %s", task.name, _reason(exc))
            return True
        retry_rest(task, rest, exc)
        return False


def retry_rest(task: Task, rest: list[Any], exc: Exception) -> None:
    """Retry ``rest`` later, or dead-letter it once retries run out."""
    retries = task.request.retries
    limit = runtime().settings.task_max_retries
    if retries >= limit:
        reason = f"gave up after {retries} retries: {_reason(exc)}"
        runtime().stores.dead_letters.add_many([(f"task:{task.name}", reason, p) for p in rest])
        log.error("%s: %s", task.name, reason)
        return
    countdown = get_exponential_backoff_interval(
        RETRY_BASE_SECONDS, retries, RETRY_MAX_SECONDS, full_jitter=True
    )
    log.warning("%s retrying %d events in %ss: %s", task.name, len(rest), countdown, _reason(exc))
    raise task.retry(args=[rest], countdown=countdown, max_retries=None, exc=exc)


def _ids(event: Event) -> dict[str, str]:
    """The ids to follow an event by in the logs."""
    ids = {"event_id": event.meta.event_id}
    post = getattr(event, "post", None)
    if post is not None:
        ids["post_id"] = post.post_id
    else:
        ids["follower_id"], ids["followed_id"] = event.follower_id, event.followed_id  # type: ignore[union-attr]
    return ids


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
