"""RabbitMQ as the Celery broker: how feedpipe's queues are declared there, and their depths.

Quorum queues (replicated, fsynced before a publish is confirmed) bound to topic exchanges:
Celery routes a retry's countdown through its native delayed delivery only from a topic
exchange; from a direct one the worker would hold the message until its ETA instead, and with
quorum queues (whose prefetch cannot grow) that blocks the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

from amqp.exceptions import AMQPError, NotFound
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.exceptions import OperationalError

log = logging.getLogger(__name__)

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
QUORUM = {"x-queue-type": "quorum"}
DEPTH_TIMEOUT_SECONDS = 3.0  # a metrics scrape or `feedpipe status` waits no longer on the broker


def is_amqp(url: str) -> bool:
    return urlsplit(url).scheme in AMQP_SCHEMES


def quorum_queue(name: str) -> Queue:
    """A durable quorum queue fed by a topic exchange of the same name."""
    exchange = Exchange(name, type="topic", durable=True)  # type: ignore[no-untyped-call]
    return Queue(name, exchange, routing_key=name, durable=True, queue_arguments=QUORUM)  # type: ignore[no-untyped-call]


def read_queue_depths(url: str, queues: Sequence[str], timeout: float = DEPTH_TIMEOUT_SECONDS) -> dict[str, int]:
    """Messages ready in each queue (a passive declare each: nothing is created), or ``{}`` when
    the broker does not answer within ``timeout``. A queue not declared yet holds nothing."""
    options = {"read_timeout": timeout, "write_timeout": timeout}
    try:
        with Connection(url, connect_timeout=timeout, transport_options=options) as connection:  # type: ignore[no-untyped-call]
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)  # one attempt
            return {queue: _ready(connection, queue) for queue in queues}
    except (OSError, AMQPError, OperationalError) as exc:
        log.warning("cannot read queue depths from the broker: %s", " ".join(str(exc).split()) or type(exc).__name__)
        return {}


def _ready(connection: Connection, queue: str) -> int:
    channel = connection.channel()  # type: ignore[no-untyped-call]
    try:
        return int(channel.queue_declare(queue, passive=True).message_count)
    except NotFound:  # the broker closed this channel; the next queue gets a fresh one
        return 0
    finally:
        if channel.is_open:
            channel.close()
