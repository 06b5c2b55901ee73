"""The Celery app: ``celery -A feedpipe.worker worker`` or ``feedpipe worker``.

Its configuration is ``feedpipe.adapters.celery_app.celery_config``, read from the settings on
first use, not at import, so importing this module connects to nothing.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from celery import Celery, signals
from prometheus_client import multiprocess

from feedpipe.adapters.celery_app import broker_queue_depths, celery_config
from feedpipe.adapters.redis_client import check_redis
from feedpipe.config import ConfigError, Settings
from feedpipe.endpoints import serve
from feedpipe.metrics import QueueDepths, in_multiprocess_mode, multiprocess_registry, prepare_multiprocess_dir
from feedpipe.runtime import install_runtime, runtime
from feedpipe.worker_probe import build_worker_probe

TASK_MODULES = [
    "feedpipe.tasks.fanout",
    "feedpipe.tasks.follows",
    "feedpipe.tasks.regen",
    "feedpipe.tasks.maintenance",
    "feedpipe.tasks.audit",
    "feedpipe.tasks.backfill",
]


class _LazyConfig(Mapping[str, Any]):
    """Celery reads this mapping on first use of ``app.conf``; settings are loaded then."""

    def __init__(self) -> None:
        self._data: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            try:
                self._data = celery_config(runtime().settings)
            except ConfigError as exc:
                raise SystemExit(f"feedpipe: {exc}") from None
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


app = Celery("feedpipe", include=TASK_MODULES)
app.config_from_object(_LazyConfig())

# -- metrics and health: prefork children write multiprocess files; the main process serves
#    the sum, with /healthz and /readyz (feedpipe/worker_probe.py) -------------------------

_started: dict[str, float] = {}


@signals.celeryd_init.connect
def _prepare_metrics(conf: Any = None, **_: Any) -> None:
    """Before any task module (and any metric) exists: a fresh multiprocess directory."""
    try:  # ``celery -A feedpipe.worker worker`` starts here; children inherit the resolved settings
        settings = install_runtime(check_redis(runtime().settings, broker=True)).settings
    except ConfigError as exc:
        raise SystemExit(f"feedpipe: {exc}") from None
    if settings.task_events and conf is not None:  # for Flower; `-E` on the command line does the same
        conf.worker_send_task_events = True
    prepare_multiprocess_dir(Path(tempfile.gettempdir()) / f"feedpipe-metrics-{os.getpid()}")
    registry = multiprocess_registry()
    registry.register(QueueDepths(lambda: queue_depths(runtime().stores, settings)))
    try:
        serve(registry, settings.metrics_port_for("worker"), settings.metrics_addr, build_worker_probe(app, settings))
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
    metrics, name = runtime().metrics, getattr(task, "name", "unknown")
    metrics.tasks.labels(name, (state or "unknown").lower()).inc()
    started = _started.pop(task_id or "", None)
    if started is not None:
        metrics.task_seconds.labels(name).observe(time.monotonic() - started)


@signals.task_retry.connect
def _task_retried(sender: Any = None, **_: Any) -> None:
    runtime().metrics.task_retries.labels(getattr(sender, "name", "unknown")).inc()


def queue_depths(stores: Any, settings: Settings) -> dict[str, int]:
    """Depths of the Redis lists operators watch, read at scrape time."""
    celery = {f"celery_{q}": n for q, n in broker_queue_depths(settings).items()}
    return {
        "feed_regen_queue": stores.regen_queue.depth(),
        "regen_processing": stores.regen_queue.processing_depth(),
        "dead_letters": stores.dead_letters.count(),
        **celery,
    }
