"""The health of a prefork worker, judged from its main process (the one serving ``/readyz``).

Celery keeps, in the main process, every request a child has accepted with the time it
started: a task still running past the visibility timeout means a stuck child (the broker has
already handed its message to another worker). A timer on the worker's own event loop beats a
heartbeat while it consumes: a loop that blocks (and so hands no task to any child) stops it.
The broker is asked directly, through the same kombu connection settings the worker uses, so
AMQP and Redis brokers are judged alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps, signals
from celery.worker import state

from feedpipe.config import Settings
from feedpipe.health import Heartbeat, WorkerProbe

BROKER_CHECK_SECONDS = 3.0  # a probe waits at most this long for the broker
BROKER_CACHE_SECONDS = 2.0  # liveness and readiness probes close together share one check
LOOP_BEAT_SECONDS = 5.0
# The event loop only hands messages to children and acks: a minute without coming around is a
# hang, never load.
LOOP_STALL_SECONDS = 60.0

_consuming = threading.Event()
loop_heartbeat = Heartbeat()
_loop_watched = threading.Event()  # set while the consumer runs: a reconnect stops the loop legitimately


class LoopHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery's classes are untyped
    """A step of the worker's consumer: beats ``loop_heartbeat`` from the consumer's own timer,
    from when it starts consuming until it stops (shutdown, or a lost broker connection)."""

    interval = LOOP_BEAT_SECONDS

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, consumer: Any) -> None:
        loop_heartbeat.beat()
        _loop_watched.set()
        self.tref = consumer.timer.call_repeatedly(self.interval, loop_heartbeat.beat)

    def stop(self, consumer: Any) -> None:
        _loop_watched.clear()
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


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


def watch_event_loop(app: Celery) -> None:
    """Add the heartbeat step to the consumer of every worker ``app`` starts from now on."""
    app.steps["consumer"].add(LoopHeartbeat)


def loop_stall() -> float | None:
    """Seconds since the event loop last came around, while it should be running; else None."""
    return loop_heartbeat.age() if _loop_watched.is_set() else None


def build_worker_probe(app: Celery, settings: Settings) -> WorkerProbe:
    watch_event_loop(app)
    return WorkerProbe(
        loop_stall=loop_stall,
        loop_stall_seconds=LOOP_STALL_SECONDS,
        stuck_after_seconds=float(settings.task_visibility_timeout_seconds),
        running=running_tasks,
        broker_error=broker_checker(app),
        consuming=_consuming.is_set,
    )

