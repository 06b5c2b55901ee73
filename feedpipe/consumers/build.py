"""Wiring a consumer from settings: the one place its adapters are chosen."""

from __future__ import annotations

from feedpipe.adapters.checkpoints import CheckpointStore
from feedpipe.adapters.dispatch import TaskDispatcher
from feedpipe.adapters.dynamo import make_client
from feedpipe.adapters.redis_feeds import DeadLetters, connect_redis
from feedpipe.adapters.streams import DynamoDBStreamSource, ShardSource
from feedpipe.config import ConfigError, Settings, Source
from feedpipe.consumers.consumer import StreamConsumer
from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.core.keys import OwnKeys


def build_source(settings: Settings, dynamodb: object) -> ShardSource:
    if settings.source is Source.KINESIS:
        raise ConfigError("bad setting FEEDPIPE_SOURCE='kinesis': the Kinesis source is not built yet")
    return DynamoDBStreamSource(make_client("dynamodbstreams"), dynamodb, settings.table_name)


def build_pipeline(settings: Settings) -> RecordPipeline:
    from feedpipe.worker import app

    dead_letters = DeadLetters(connect_redis(settings.redis), OwnKeys(settings.key_prefix).dead_letters)
    return RecordPipeline(
        TaskDispatcher(app, settings.events_per_message),
        dead_letters,
        settings.excluded_visibilities,
    )


def build_consumer(settings: Settings) -> StreamConsumer:
    dynamodb = make_client("dynamodb")
    return StreamConsumer(
        source=build_source(settings, dynamodb),
        checkpoints=CheckpointStore(dynamodb, settings.lease_table_name),
        pipeline=build_pipeline(settings),
        records_per_read=settings.records_per_read,
        idle_poll_seconds=settings.idle_poll_seconds,
    )
