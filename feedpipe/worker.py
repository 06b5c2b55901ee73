"""The Celery app: ``celery -A feedpipe.worker worker`` or ``feedpipe worker``.

JSON only (a pickled message is refused, never run), acks late and requeued when a worker
dies, one queue per kind of work (quorum queues on RabbitMQ, every publish confirmed).
Configuration is read from the settings on first use, not at import, so importing this module
connects to nothing.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, signals
from kombu.entity import Queue
from prometheus_client import multiprocess

from feedpipe.adapters.rabbitmq import is_amqp, quorum_queue, read_queue_depths
from feedpipe.adapters.redis_client import check_redis, connect_broker, tls_options
from feedpipe.config import ConfigError, Settings
from feedpipe.core.keys import OwnKeys
from feedpipe.endpoints import serve
from feedpipe.metrics import QueueDepths, in_multiprocess_mode, multiprocess_registry, prepare_multiprocess_dir
from feedpipe.runtime import install_runtime, runtime
from feedpipe.worker_probe import build_worker_probe

FANOUT_QUEUE = "fanout"
RETRACT_QUEUE = "retract"
FOLLOWS_QUEUE = "follows"
REGEN_QUEUE = "regen"
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (FANOUT_QUEUE, RETRACT_QUEUE, FOLLOWS_QUEUE, REGEN_QUEUE, MAINTENANCE_QUEUE)

TASK_MODULES = [
    "feedpipe.tasks.fanout",
    "feedpipe.tasks.follows",
    "feedpipe.tasks.regen",
    "feedpipe.tasks.maintenance",
    "feedpipe.tasks.audit",
    "feedpipe.tasks.backfill",
]


def celery_config(settings: Settings) -> dict[str, Any]:
    amqp = is_amqp(settings.broker)
    config: dict[str, Any] = {
        "broker_url": settings.broker,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": _amqp_options() if amqp else _redis_options(settings),
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,  # failures are dead-lettered by the task itself
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_queues": [quorum_queue(name) if amqp else Queue(name) for name in QUEUES],  # type: ignore[no-untyped-call]
        "task_default_queue": MAINTENANCE_QUEUE,
        "task_create_missing_queues": False,
    }
    if amqp:
        # Quorum queues take no global QoS: Celery detects them and keeps the prefetch static;
        # retry countdowns wait in its native delayed-delivery queues (quorum too), not in a worker.
        config["worker_detect_quorum_queues"] = True
        config["broker_native_delayed_delivery_queue_type"] = "quorum"
    if urlsplit(settings.broker).scheme == "rediss":  # the same CA, client cert and checks as the app's Redis
        config["broker_use_ssl"] = tls_options(settings)
    return config


def _redis_options(settings: Settings) -> dict[str, Any]:
    visibility = settings.task_visibility_timeout_seconds
    return {
        "visibility_timeout": visibility,
        # Sweep for messages a dead worker left unacked well within the visibility timeout.
        "unacked_restore_interval": max(1, min(10, visibility // 4)),
        "unacked_restore_throttle": 1,
        "global_keyprefix": f"{settings.key_prefix}broker:",
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
    }


def _amqp_options() -> dict[str, Any]:
    # py-amqp then waits for the broker's ack of every publish and raises on a nack (or a
    # closed channel), so the consumer checkpoints only what the broker has stored.
    return {"confirm_publish": True}


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


def broker_queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting in each Celery queue, read from the broker itself: it is not the app's
    Redis when that is a cluster. On RabbitMQ, the messages ready (its own metrics add unacked)."""
    if is_amqp(settings.broker):
        return read_queue_depths(settings.broker, QUEUES)
    client = connect_broker(settings)
    if client is None:
        return {}
    try:
        pipe = client.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.llen(f"{OwnKeys(settings.key_prefix).broker_prefix}{queue}")
        return {queue: int(n) for queue, n in zip(QUEUES, pipe.execute(), strict=True)}
    finally:
        client.close()
