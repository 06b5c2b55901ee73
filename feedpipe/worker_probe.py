"""The health of a prefork worker, judged from its main process (the one serving ``/readyz``).

Celery keeps, in the main process, every request a child has accepted with the time it
started: a task still running past the visibility timeout means a stuck child (the broker has
already handed its message to another worker). The broker is asked directly, through the same
kombu connection settings the worker uses, so AMQP and Redis brokers are judged alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, signals
from celery.worker import state

from feedpipe.config import Settings
from feedpipe.health import WorkerProbe

BROKER_CHECK_SECONDS = 3.0  # a probe waits at most this long for the broker
BROKER_CACHE_SECONDS = 2.0  # liveness and readiness probes close together share one check

_consuming = threading.Event()


def _started_consuming(**_: Any) -> None:
    _consuming.set()


def _stopped_consuming(**_: Any) -> None:
    _consuming.clear()


signals.worker_ready.connect(_started_consuming)
signals.worker_shutting_down.connect(_stopped_consuming)


def running_tasks() -> list[tuple[str, float]]:
    """(task name, seconds running) of each task a child has accepted and not finished."""
    now = time.time()
    return [(req.name, now - req.time_start) for req in list(state.active_requests) if req.time_start]


def broker_checker(app: Celery, clock: Callable[[], float] = time.monotonic) -> Callable[[], str | None]:
    """A check of the broker: None when it answers, else why not (cached briefly)."""
    lock = threading.Lock()
    last: dict[str, Any] = {"at": float("-inf"), "error": None}

    def check() -> str | None:
        with lock:
            if clock() - last["at"] >= BROKER_CACHE_SECONDS:
                last["error"], last["at"] = _ask_broker(app), clock()
            error: str | None = last["error"]
            return error

    return check


def _ask_broker(app: Celery) -> str | None:
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_CHECK_SECONDS)
            connection.default_channel  # noqa: B018 - opening a channel asks the server (Redis: PING)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def build_worker_probe(app: Celery, settings: Settings) -> WorkerProbe:
    return WorkerProbe(
        stuck_after_seconds=float(settings.task_visibility_timeout_seconds),
        running=running_tasks,
        broker_error=broker_checker(app),
        consuming=_consuming.is_set,
    )

