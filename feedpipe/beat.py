"""``feedpipe beat``: the one scheduler of periodic jobs, safe against a second one.

A beat must hold ``{prefix}beat:lock`` (a Redis lock with a TTL, renewed while it runs) to
schedule anything. A second beat started by mistake waits as a hot standby and takes over
within the lock's TTL if the first dies; one that loses its lock stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from typing import Any

from celery.beat import PersistentScheduler
from redis.exceptions import LockError

from feedpipe.adapters.celery_app import publisher_app
from feedpipe.adapters.redis_feeds import connect_redis
from feedpipe.config import Settings
from feedpipe.core import catalog
from feedpipe.core.keys import OwnKeys
from feedpipe.health import BeatProbe, Heartbeat

log = logging.getLogger(__name__)

AUDIT_EVERY_SECONDS = 60.0  # FEEDPIPE_AUDIT_SAMPLE_PER_MINUTE users each time
# Celery beat sleeps until the next job is due, up to this long: its loop comes around (and
# beats the probe's heartbeat) at least this often, whatever the schedule.
BEAT_MAX_LOOP_SECONDS = 5


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    def every(seconds: float, task: str) -> dict[str, Any]:
        # Routed to its queue by name (the catalog); a message not started within its own
        # interval is dropped: the next one replaces it.
        return {"task": task, "schedule": seconds, "options": {"expires": seconds}}

    schedule = {
        "regen-drain": every(settings.regen_drain_every_seconds, catalog.REGEN_DRAIN),
        "trim-caches": every(settings.trim_caches_every_seconds, catalog.TRIM_CACHES),
        "trim-durable": every(settings.trim_durable_every_seconds, catalog.TRIM_DURABLE),
        "rebuild-active": every(settings.rebuild_active_every_seconds, catalog.REBUILD_ACTIVE),
    }
    if settings.audit_sample_per_minute:
        schedule["audit-sample"] = every(AUDIT_EVERY_SECONDS, catalog.AUDIT_SAMPLE)
    return schedule


def run_beat(settings: Settings, stop: threading.Event, probe: BeatProbe | None = None) -> int:
    """Wait for the lock, then run Celery beat until stopped or the lock is lost."""
    probe = probe or BeatProbe(Heartbeat(), float("inf"))
    lock = connect_redis(settings).lock(
        OwnKeys(settings.key_prefix).beat_lock, timeout=settings.beat_lock_seconds, thread_local=False
    )
    log.info("waiting for the beat lock (another beat may hold it)")
    probe.role = "standby"
    while not lock.acquire(blocking=True, blocking_timeout=1.0):
        probe.heartbeat.beat()
        if stop.is_set():
            return 0
    if stop.is_set():  # told to stop while it waited, and the lock came free: never lead
        with contextlib.suppress(LockError):
            lock.release()
        return 0
    probe.role = "leader"
    probe.heartbeat.beat()
    log.info("holding the beat lock; scheduling %s", sorted(beat_schedule(settings)))
    renewer = threading.Thread(target=_keep_lock, args=(lock, settings.beat_lock_seconds, stop), daemon=True)
    renewer.start()
    app = publisher_app(settings)
    app.conf.beat_schedule = beat_schedule(settings)
    schedule_file = os.path.join(tempfile.gettempdir(), f"feedpipe-beat-{os.getpid()}")
    try:
        app.Beat(schedule=schedule_file, loglevel=settings.log_level, max_interval=BEAT_MAX_LOOP_SECONDS,
                 scheduler=_ticking_scheduler(probe.heartbeat)).run()
    finally:
        stop.set()
        for suffix in ("", ".db", ".dat", ".bak", ".dir"):
            if os.path.exists(schedule_file + suffix):
                os.remove(schedule_file + suffix)
        with contextlib.suppress(LockError):  # already expired: nothing to give back
            lock.release()
    return 0


def _ticking_scheduler(heartbeat: Heartbeat) -> type[PersistentScheduler]:
    """Celery's own scheduler, beating ``heartbeat`` on every pass of its loop."""

    class TickingScheduler(PersistentScheduler):  # type: ignore[misc]  # Celery's classes are untyped
        def tick(self, *args: Any, **kwargs: Any) -> float:
            heartbeat.beat()
            interval: float = super().tick(*args, **kwargs)
            return interval

    return TickingScheduler


def _keep_lock(lock: Any, ttl: int, stop: threading.Event) -> None:
    while not stop.wait(ttl / 3):
        try:
            lock.reacquire()
        except LockError:
            log.error("lost the beat lock; stopping this beat so two never schedule at once")
            os.kill(os.getpid(), signal.SIGTERM)
            return
