"""The worker: ``feedpipe worker`` or ``celery -A feedpipe.worker worker``.

``WorkerApp`` is a Celery app made from settings: it runs every task of ``TASK_MODULES`` (each
a ``tasks.base.FeedpipeTask``) and owns this process's services, which its tasks reach as
``self.services``: built on first use, and again in each prefork child, so no child shares its
parent's connections. ``feedpipe worker`` makes one from the settings it loaded; ``app`` below
is the one ``celery -A feedpipe.worker`` finds, whose settings are read from the environment on
first use, not at import. Nothing here connects at import, and no feedpipe code reaches ``app``:
a task sends through its own app, the consumer and beat through ``celery_app.publisher_app``.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from celery import Celery, signals
from prometheus_client import multiprocess

from feedpipe.adapters.celery_app import broker_queue_depths, celery_config
from feedpipe.adapters.redis_client import check_redis
from feedpipe.config import ConfigError, Settings, load_settings
from feedpipe.endpoints import serve
from feedpipe.metrics import QueueDepths, in_multiprocess_mode, multiprocess_registry, prepare_multiprocess_dir
from feedpipe.services import Services
from feedpipe.tasks.base import FeedpipeTask
from feedpipe.worker_probe import build_worker_probe

TASK_MODULES = [
    "feedpipe.tasks.fanout",
    "feedpipe.tasks.follows",
    "feedpipe.tasks.regen",
    "feedpipe.tasks.maintenance",
    "feedpipe.tasks.audit",
    "feedpipe.tasks.backfill",
]


class WorkerApp(Celery):  # type: ignore[misc]  # Celery's classes are untyped
    """The Celery app of a worker, on ``settings`` (or, when none are given, the environment's,
    read on first use). ``services`` may be given too (tests); otherwise each process builds
    its own from the settings when a task first needs them."""

    def __init__(self, settings: Settings | None = None, services: Services | None = None) -> None:
        super().__init__("feedpipe", task_cls=FeedpipeTask)
        self._settings = services.settings if services is not None else settings
        self._services = services
        self._building = threading.Lock()
        # A fork copies the lock as it is: held, if a thread of the parent (its /metrics server)
        # was building services then. The child starts with a fresh one.
        fresh = weakref.WeakMethod(self._fresh_lock)
        os.register_at_fork(after_in_child=lambda: (renew := fresh()) is not None and renew())
        self.config_from_object(_LazyConfig(lambda: celery_config(self.settings)))
        for module in TASK_MODULES:
            run: Callable[..., object]
            for name, run in importlib.import_module(module).TASKS.items():
                # Not shared: Celery would otherwise add every task to every app made after this one.
                self.task(run, name=name, bind=True, shared=False)

    def _fresh_lock(self) -> None:
        self._building = threading.Lock()

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def use_settings(self, settings: Settings) -> None:
        """Run on ``settings`` from now on (the worker resolves them once at start); services
        built on the old ones are dropped."""
        self._settings, self._services = settings, None

    @property
    def services(self) -> Services:
        """This process's services: built on first use, and again after a fork."""
        with self._building:  # a thread pool's first tasks ask side by side
            if self._services is None or self._services.pid != os.getpid():
                self._services = Services(self.settings)
            return self._services


class _LazyConfig(Mapping[str, Any]):
    """Celery reads this mapping on first use of ``app.conf``; settings are loaded then."""

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build = build
        self._data: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            try:
                self._data = self._build()
            except ConfigError as exc:
                raise SystemExit(f"feedpipe: {exc}") from None
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


app = WorkerApp()

# -- metrics and health: prefork children write multiprocess files; the main process serves
#    the sum, with /healthz and /readyz (feedpipe/worker_probe.py) -------------------------

_started: dict[str, float] = {}


@signals.celeryd_init.connect
def _prepare_metrics(instance: Any = None, conf: Any = None, **_: Any) -> None:
    """Before any metric exists: a fresh multiprocess directory."""
    worker_app = getattr(instance, "app", None)
    if not isinstance(worker_app, WorkerApp):
        return  # a worker of some other Celery app in this process
    try:  # ``celery -A feedpipe.worker worker`` starts here; children inherit the resolved settings
        worker_app.use_settings(check_redis(worker_app.settings, broker=True))
    except ConfigError as exc:
        raise SystemExit(f"feedpipe: {exc}") from None
    settings = worker_app.settings
    if settings.task_events and conf is not None:  # for Flower; `-E` on the command line does the same
        conf.worker_send_task_events = True
    prepare_multiprocess_dir(Path(tempfile.gettempdir()) / f"feedpipe-metrics-{os.getpid()}")
    registry = multiprocess_registry()
    registry.register(QueueDepths(lambda: queue_depths(worker_app.services.stores, settings)))
    try:
        serve(registry, settings.metrics_port_for("worker"), settings.metrics_addr,
              build_worker_probe(worker_app, settings))
    except ConfigError as exc:
        raise SystemExit(f"feedpipe: {exc}") from None


@signals.worker_process_shutdown.connect
def _child_gone(pid: int | None = None, **_: Any) -> None:
    if in_multiprocess_mode():
        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.monotonic()


@signals.task_postrun.connect
def _task_finished(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    started, services = _started.pop(task_id or "", None), _services_of(task)
    if services is None:
        return
    metrics, name = services.metrics, getattr(task, "name", "unknown")
    metrics.tasks.labels(name, (state or "unknown").lower()).inc()
    if started is not None:
        metrics.task_seconds.labels(name).observe(time.monotonic() - started)


@signals.task_retry.connect
def _task_retried(sender: Any = None, **_: Any) -> None:
    services = _services_of(sender)
    if services is not None:
        services.metrics.task_retries.labels(getattr(sender, "name", "unknown")).inc()


def _services_of(task: Any) -> Services | None:
    """The services of a feedpipe task's app; None for a task of another app."""
    owner = getattr(task, "app", None)
    return owner.services if isinstance(owner, WorkerApp) else None


def queue_depths(stores: Any, settings: Settings) -> dict[str, int]:
    """Depths of the Redis lists operators watch, read at scrape time."""
    celery = {f"celery_{q}": n for q, n in broker_queue_depths(settings).items()}
    return {
        "feed_regen_queue": stores.regen_queue.depth(),
        "regen_processing": stores.regen_queue.processing_depth(),
        "dead_letters": stores.dead_letters.count(),
        **celery,
    }
