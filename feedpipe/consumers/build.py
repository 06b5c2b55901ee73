"""Wiring a consumer from settings: the one place its adapters are chosen."""

from __future__ import annotations

import os
import socket
import uuid

from feedpipe.adapters.celery_app import publisher_app
from feedpipe.adapters.dispatch import TaskDispatcher
from feedpipe.adapters.dynamo import DEFAULT_POOL, make_client
from feedpipe.adapters.kinesis import KinesisSource
from feedpipe.adapters.leases import LeaseTable
from feedpipe.adapters.streams import DynamoDBStreamSource, ShardSource, keep_records_raw
from feedpipe.config import ConfigError, InitialPosition, Settings, Source
from feedpipe.consumers.consumer import StreamConsumer
from feedpipe.consumers.leasing import LeaseCoordinator
from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.metrics import Metrics, noop_metrics
from feedpipe.services import build_dead_letters


def build_source(settings: Settings, dynamodb: object) -> ShardSource:
    # One connection for each read in flight, so concurrent reads never wait on the pool.
    pool = max(DEFAULT_POOL, settings.shard_read_concurrency)
    if settings.source is Source.KINESIS:
        if not settings.kinesis_stream:  # load_settings requires it already; this narrows the type
            raise ConfigError("bad setting FEEDPIPE_KINESIS_STREAM: required when FEEDPIPE_SOURCE=kinesis")
        return KinesisSource(make_client("kinesis", max_pool=pool), settings.kinesis_stream)
    streams = keep_records_raw(make_client("dynamodbstreams", max_pool=pool))
    return DynamoDBStreamSource(streams, dynamodb, settings.table_name)


def build_pipeline(settings: Settings, metrics: Metrics | None = None) -> RecordPipeline:
    return RecordPipeline(
        TaskDispatcher(publisher_app(settings), settings.events_per_message),
        build_dead_letters(settings, make_client("dynamodb"), metrics),
        settings.excluded_visibilities,
    )


def consumer_id() -> str:
    """Unique per process, readable in ``feedpipe status``: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def build_consumer(settings: Settings, metrics: Metrics | None = None) -> StreamConsumer:
    metrics = metrics or noop_metrics()
    dynamodb = make_client("dynamodb")
    source = build_source(settings, dynamodb)
    leases = LeaseTable(dynamodb, settings.lease_table_name, source.stream_id)
    return StreamConsumer(
        source=source,
        leases=LeaseCoordinator(
            leases, consumer_id(), settings.lease_failover_seconds,
            start_at_latest=settings.initial_position is InitialPosition.LATEST,
        ),
        pipeline=build_pipeline(settings, metrics),
        metrics=metrics,
        source_label=settings.source.value,
        records_per_read=settings.records_per_read,
        read_concurrency=settings.shard_read_concurrency,
        idle_poll_seconds=settings.idle_poll_seconds,
    )
