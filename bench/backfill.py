"""First-deploy backfill and audit cost, in-process on moto and a real Redis.

A table is filled as the app writes it (users, follows, posts, some deleted), with no feed at
all. Then, on the same data, each measured from empty feeds:

- ``feedpipe backfill``'s work (a Scan cut in segments, each user's durable feed built by
  ``rebuild_durable``, warm caches rebuilt), in one process: users per second, and DynamoDB
  read calls per user;
- baseline: the same users handed one by one to ``feedpipe rebuild``'s path
  (``ops.rebuild_users``), which a team without a backfill would script (it also writes a
  cache for every user, where the backfill rebuilds only the warm ones);
- ``feedpipe audit`` of every user of the finished state: read calls per user.

moto's Query reads its whole table on every call, so absolute times here are moto's; the read
counts are what DynamoDB would bill as requests.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from moto import mock_aws

from bench._util import local_redis, set_local_aws_env
from bench.figures import Figure
from feedpipe.adapters.backfill_progress import BackfillProgress
from feedpipe.adapters.dynamo import make_client
from feedpipe.adapters.tables import create_tables
from feedpipe.adapters.user_scan import all_users
from feedpipe.config import load_settings
from feedpipe.dev.appsim import AppWriter
from feedpipe.feeds.backfill import backfill_segment
from feedpipe.feeds.repair import audit_users
from feedpipe.feeds.stores import Stores
from feedpipe.ops import rebuild_users
from feedpipe.services import build_stores

TABLE, LEASES = "SocialMediaApp", "feedpipe-leases"
READS = frozenset({"Query", "Scan", "GetItem", "BatchGetItem"})
SEGMENTS = 4


def fill(app: AppWriter, users: list[str], follows: int, posts: int) -> None:
    rng = random.Random(5)
    for user in users:
        app.create_user(user)
    for user in users:
        for author in rng.sample([u for u in users if u != user], follows):
            app.follow(user, author)
    for n in range(posts):
        author = rng.choice(users)
        app.create_post(author, author, f"post {n} " * 20, post_id=f"p{n:05d}")
        if n % 10 == 0:
            app.delete_post(f"p{n:05d}")


def clear_feeds(stores: Stores, users: list[str]) -> None:
    for user in users:
        stores.table.delete_keys({"PK": {"S": i["PK"]}, "SK": {"S": i["SK"]}} for i in stores.table.feed_items(user))


def run_backfill(stores: Stores, client: Any) -> None:
    progress = BackfillProgress(client, LEASES)
    progress.clear(SEGMENTS)
    progress.start(SEGMENTS)
    for segment in range(SEGMENTS):
        backfill_segment(stores, SEGMENTS, segment, budget_seconds=3600)


def measure(calls: Counter[str], work: Any, users: int) -> tuple[float, float]:
    """(users per second, read calls per user) of ``work``."""
    calls.clear()
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    return users / seconds, sum(n for op, n in calls.items() if op in READS) / users


def run(short: bool = False) -> list[Figure]:
    set_local_aws_env()
    n_users, follows, posts = (12, 3, 24) if short else (100, 6, 200)
    users = [f"u{i:04d}" for i in range(n_users)]
    with local_redis() as server, mock_aws():
        client = make_client("dynamodb")
        create_tables(client, TABLE, LEASES)
        calls: Counter[str] = Counter()
        client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.update([model.name]))
        settings = load_settings({"FEEDPIPE_REDIS_URL": server.url, "FEEDPIPE_WRITE_CONCURRENCY": "1"})
        stores = build_stores(settings, client)
        fill(AppWriter(client, stores.cache.client, TABLE, transactional=False), users, follows, posts)
        rebuilt_rate, rebuilt_reads = measure(calls, lambda: rebuild_users(stores, users, durable=True), n_users)
        clear_feeds(stores, users)
        stores.cache.client.flushdb()
        rate, reads = measure(calls, lambda: run_backfill(stores, client), n_users)
        _, audit_reads = measure(calls, lambda: audit_users(stores, all_users(client, TABLE), repair=False), n_users)
    where = f"{n_users:,} users, {follows} followees each, {posts:,} posts, in-process moto"
    return [
        Figure(f"backfill: users built per second ({where})", round(rate, 1), "users/s",
               "feedpipe rebuild of every user, one by one", round(rebuilt_rate, 1), "higher",
               "the Scan and the durable progress cost next to nothing beside the builds", rate >= 0.8 * rebuilt_rate),
        Figure("backfill: DynamoDB read calls per user", round(reads, 1), "reads/user",
               "feedpipe rebuild of every user", round(rebuilt_reads, 1), "lower",
               "no more than a rebuild's plus a share of the Scan", reads <= rebuilt_reads + 1),
        Figure("audit: DynamoDB read calls per user, clean feeds", round(audit_reads, 1), "reads/user",
               "feedpipe rebuild of every user", round(rebuilt_reads, 1), "lower",
               f"2 + one per followee ({follows}) + one per 100 feed items", audit_reads <= 3 + follows + 1,
               extra={"followees": follows}),
    ]
