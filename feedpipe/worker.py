"""The Celery app: ``celery -A feedpipe.worker worker`` or ``feedpipe worker``.

JSON only (a pickled message is refused, never run), acks late and requeued when a worker
dies, one queue per kind of work. Configuration is read from the settings on first use, not at
import, so importing this module connects to nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from celery import Celery
from kombu.entity import Queue

from feedpipe.config import ConfigError, Settings
from feedpipe.runtime import runtime

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
]


def celery_config(settings: Settings) -> dict[str, Any]:
    visibility = settings.task_visibility_timeout_seconds
    return {
        "broker_url": settings.broker,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": visibility,
            # Sweep for messages a dead worker left unacked well within the visibility timeout.
            "unacked_restore_interval": max(1, min(10, visibility // 4)),
            "unacked_restore_throttle": 1,
            "global_keyprefix": f"{settings.key_prefix}broker:",
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            "confirm_publish": True,  # amqp: a publish returns only once the broker has it
        },
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
        "task_queues": [Queue(name) for name in QUEUES],  # type: ignore[no-untyped-call]
        "task_default_queue": MAINTENANCE_QUEUE,
        "task_create_missing_queues": False,
    }


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
