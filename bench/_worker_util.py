"""One worker's fan-out tasks run alone against the DynamoDB model: for the memory and the
per-process rate figures of ``bench.million``.

The world is ``bench.million``'s (the same table, follow edges, post and warm feeds in a real
Redis) with nothing modelled but the data: no latency, no capacity limit, a wall clock. What a
task costs here is its own work, and the model's answering (measured apart where it matters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from bench._fanout_util import AUTHOR, TABLE, follow_items, follower_ids, put_post, warm_subset, warm_up
from bench._util import set_local_aws_env
from bench.dynamo_capacity import Limits
from bench.dynamo_model import DynamoModel, WallClock
from feedpipe.adapters.dynamo import make_client, use_prebuilt_batch_writes
from feedpipe.adapters.tables import app_table_spec, dead_letter_table_spec
from feedpipe.config import Settings, load_settings
from feedpipe.core.events import Post
from feedpipe.feeds.fanout import deliver_chunk, fan_out_post
from feedpipe.feeds.stores import Stores
from feedpipe.services import build_stores

CHUNK = 1000
WARM_EVERY = 10
UNLIMITED = Limits(table_wcu=1e12, table_rcu=1e12)  # partitions as many as that needs: none throttles


class ModelLoader:
    """Set-up writes straight into the model (no capacity, no time): ``put_post`` calls this."""

    def __init__(self, model: DynamoModel) -> None:
        self.model = model

    def put_item(self, TableName: str, Item: dict[str, Any]) -> None:  # noqa: N803 - boto3's names
        self.model.load(TableName, [Item])


def world_settings(redis_url: str) -> Settings:
    """``bench.million``'s: a chunk's writes one call after another (the fleet's slots overlap them).
    No read pace: a process's own rate and memory are measured, and the pace's waits are neither."""
    return load_settings({
        "FEEDPIPE_TABLE_NAME": TABLE, "FEEDPIPE_REDIS_URL": redis_url, "FEEDPIPE_WRITE_CONCURRENCY": "1",
        "FEEDPIPE_FANOUT_CHUNK_SIZE": str(CHUNK), "FEEDPIPE_FOLLOWER_READ_RCU": "0",
    })  # fmt: skip


@dataclass
class TaskWorld:
    model: DynamoModel
    stores: Stores
    post: Post
    followers: list[str]

    def plan(self) -> int:
        """A planner task walking every follower alone: its chunks are dropped (their messages
        would leave the process), its last one delivered here, as the task does."""
        return fan_out_post(self.stores, self.post, lambda chunk: None)

    def deliver(self, n: int = 0) -> int:
        """The ``n``-th chunk's task."""
        return deliver_chunk(self.stores, self.post, self.followers[n * CHUNK : (n + 1) * CHUNK])


def task_world(followers: int, redis_url: str, model: DynamoModel | None = None) -> TaskWorld:
    set_local_aws_env()
    model = model or DynamoModel(WallClock(), UNLIMITED, latency={})
    settings = world_settings(redis_url)
    model.create_table(app_table_spec(TABLE))
    model.create_table(dead_letter_table_spec(settings.dead_letter_table_name))
    ids = follower_ids(followers)
    model.load(TABLE, follow_items(ids, AUTHOR))
    post = put_post(ModelLoader(model), AUTHOR)
    cache = redis.Redis.from_url(redis_url)
    warm_up(cache, warm_subset(ids, WARM_EVERY))
    cache.close()
    client = use_prebuilt_batch_writes(make_client("dynamodb", max_pool=4, validate=False))
    return TaskWorld(model, build_stores(settings, model.attach(client)), post, ids)
