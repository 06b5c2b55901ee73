"""A process's services: the settings and what is built from them (stores, clients, metrics).

Each is built on first use, so an object made before a fork connects nothing; whoever owns a
``Services`` hands it down explicitly. The worker's app owns one per process (a prefork child
builds its own: ``worker.WorkerApp.services``); the CLI builds one per command from the settings
it loaded. There is no process-wide instance.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from feedpipe.adapters.author_posts import AuthorPosts
from feedpipe.adapters.backfill_progress import BackfillProgress
from feedpipe.adapters.dead_letters import DeadLetterLimits, DeadLetters
from feedpipe.adapters.dynamo import FeedTable, make_client, use_prebuilt_batch_writes
from feedpipe.adapters.huge_authors import HugeAuthorTable
from feedpipe.adapters.read_pace import ReadPace
from feedpipe.adapters.redis_client import RedisClient
from feedpipe.adapters.redis_feeds import FeedCache, RedisCursors, connect_redis
from feedpipe.adapters.regen_queue import RegenQueue
from feedpipe.adapters.write_budget import WriteBudget, redis_hit, redis_limiter
from feedpipe.config import Settings
from feedpipe.core.keys import OwnKeys
from feedpipe.feeds.stores import Stores, feed_format
from feedpipe.metrics import Metrics, count_throttles, dead_letter_labels, in_multiprocess_mode, noop_metrics

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    pid: int = field(default_factory=os.getpid)  # the process they were made in
    requeue_streak: int = 0  # messages put back in a row (``tasks.base``): how long the next one waits
    _stores: Stores | None = None
    _metrics: Metrics | None = None
    _dynamodb: Any = None
    _redis: RedisClient | None = None
    # A thread pool's first tasks ask side by side: each part is built once.
    _building: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def stores(self) -> Stores:
        with self._building:
            if self._stores is None:
                self._stores = build_stores(self.settings, self.dynamodb, metrics=self.metrics, redis=self.redis)
            return self._stores

    @property
    def dynamodb(self) -> Any:
        """This process's DynamoDB client, for what runs beside the feed rules (scans of the
        users, backfill progress); the stores use the same one."""
        with self._building:
            if self._dynamodb is None:
                self._dynamodb = dynamodb_client(self.settings)
            return self._dynamodb

    @property
    def redis(self) -> RedisClient:
        """This process's client of the app's cache Redis (the stores use the same one)."""
        with self._building:
            if self._redis is None:
                self._redis = connect_redis(self.settings)
            return self._redis

    @property
    def metrics(self) -> Metrics:
        """This process's metrics: a prefork child's go to the shared multiprocess files; a
        process that serves its own ``/metrics`` passes its own in (``_metrics``)."""
        with self._building:
            if self._metrics is None:
                self._metrics = Metrics.create(None) if in_multiprocess_mode() else noop_metrics()
            return self._metrics

    @property
    def own_keys(self) -> OwnKeys:
        return OwnKeys(self.settings.key_prefix)


def dynamodb_client(settings: Settings) -> Any:
    return use_prebuilt_batch_writes(make_client("dynamodb", max_pool=settings.write_concurrency + 4, validate=False))


def build_stores(
    settings: Settings, dynamodb: Any = None, metrics: Metrics | None = None, redis: RedisClient | None = None
) -> Stores:
    """The real adapters over DynamoDB and Redis (clients made from settings when not given)."""
    metrics = metrics or noop_metrics()
    client = dynamodb or dynamodb_client(settings)
    count_throttles(client, metrics)
    redis_client = redis if redis is not None else connect_redis(settings)
    own = OwnKeys(settings.key_prefix)
    table = FeedTable(client, settings.table_name, settings.write_concurrency)
    table.on_unprocessed = metrics.unprocessed_items.inc
    table.budget = build_write_budget(settings, redis_client, own)
    table.read_pace = build_read_pace(settings, redis_client, own)
    return Stores(
        table=table,
        cache=FeedCache(redis_client, settings.feed_max_length, settings.feed_ttl_seconds, own),
        dead_letters=build_dead_letters(settings, client, metrics),
        settings=settings,
        regen_queue=RegenQueue(redis_client, own, settings.regen_lease_seconds),
        metrics=metrics,
        author_posts=AuthorPosts(redis_client, own, settings.feed_max_length, settings.author_posts_ttl_seconds),
        huge_authors=HugeAuthorTable(table),
        cursors=RedisCursors(redis_client),
        backfill_progress=BackfillProgress(client, settings.lease_table_name),
        format=feed_format(settings),
    )


def build_write_budget(settings: Settings, redis: RedisClient, own: OwnKeys) -> WriteBudget | None:
    """The write budget all workers share in the app's Redis; None (no Redis call) when it is 0.
    A write waits for capacity at most half the task budget, then retries as a transient error."""
    if not settings.write_budget_wcu:
        return None
    hit = redis_hit(redis, own.write_budget, settings.write_budget_wcu)
    return WriteBudget(hit, settings.write_budget_wcu, max_wait_seconds=settings.task_budget_seconds / 2)


def build_read_pace(settings: Settings, redis: RedisClient, own: OwnKeys) -> ReadPace | None:
    """The follower walks' read pace, shared in the app's Redis; None when it is 0, and on a Redis
    Cluster (its counters need a plain Redis for now: there walks read unpaced, as before). A walk
    waits for it at most a tenth of the task budget a page."""
    if not settings.follower_read_rcu:
        return None
    if getattr(redis, "connection_pool", None) is None:  # a Redis Cluster
        log.warning("FEEDPIPE_FOLLOWER_READ_RCU needs a plain Redis for now: follower walks read unpaced")
        return None
    hit = redis_limiter(redis, own.follower_reads, settings.follower_read_rcu)
    return ReadPace(hit, settings.follower_read_rcu, max_wait_seconds=settings.task_budget_seconds / 10)


def build_dead_letters(settings: Settings, dynamodb: Any, metrics: Metrics | None = None) -> DeadLetters:
    """The dead-letter store in feedpipe's own table, counted in ``metrics``."""
    metrics = metrics or noop_metrics()

    def count(source: str, reason: str) -> None:
        metrics.dead_letters.labels(*dead_letter_labels(source, reason)).inc()

    def drop(source: str, reason: str) -> None:
        metrics.dead_letters_dropped.labels(dead_letter_labels(source, reason)[0]).inc()

    return DeadLetters(
        dynamodb, settings.dead_letter_table_name, OwnKeys(settings.key_prefix).dead_letters,
        DeadLetterLimits(settings.dead_letter_max_bytes, settings.dead_letter_max_count),
        on_letter=count, on_drop=drop,
    )
