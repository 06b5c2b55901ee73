"""The Celery app as settings make it, for publishers and workers alike.

JSON only (a pickled message is refused, never run), acks late and requeued when a worker
dies, one queue per kind of work routed by task name (``feedpipe.core.catalog``; quorum queues
on RabbitMQ, every publish confirmed). A publisher (the consumer, beat, ``dlq replay``) gets
an app with this configuration and no task modules: it imports no worker.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu.entity import Queue

from feedpipe.adapters.rabbitmq import is_amqp, quorum_queue, read_queue_depths
from feedpipe.adapters.redis_client import connect_broker, tls_options
from feedpipe.config import Settings
from feedpipe.core.catalog import MAINTENANCE_QUEUE, QUEUES, task_routes
from feedpipe.core.keys import OwnKeys


def publisher_app(settings: Settings) -> Celery:
    """A Celery app that sends feedpipe's tasks (by name, routed by the catalog) and runs none."""
    app = Celery("feedpipe-publisher")
    app.config_from_object(celery_config(settings))
    return app


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
        "task_routes": task_routes(),
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
