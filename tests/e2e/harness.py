"""End-to-end harness: real processes (``feedpipe worker``, ``feedpipe consume``) against a moto
server and a real Redis, the app's writes, and a model of what every feed must end as."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.transport.native_delayed_delivery import MAX_LEVEL, level_name
from redis.cluster import RedisCluster

from feedpipe.adapters.dynamo import make_client
from feedpipe.adapters.leases import LeaseTable
from feedpipe.adapters.rabbitmq import is_amqp, read_queue_depths
from feedpipe.adapters.redis_client import connect_broker
from feedpipe.adapters.streams import DynamoDBStreamSource
from feedpipe.adapters.tables import create_tables
from feedpipe.config import Settings, load_settings
from feedpipe.core import keys
from feedpipe.core.attributes import from_image
from feedpipe.core.catalog import QUEUES
from feedpipe.core.events import Post
from feedpipe.core.keys import OwnKeys
from feedpipe.core.records import post_from_image, record_sequence
from feedpipe.dev.appsim import AppWriter
from feedpipe.dev.local import LocalBackendError, stop_process, wait_for
from feedpipe.feeds.delivery import add_post
from feedpipe.ops import active_users
from feedpipe.services import build_stores

TABLE = "SocialMediaApp"
CLOCK_START = datetime(2026, 11, 25, 10, tzinfo=UTC)  # posts' created_at: a second apart from here
LEASES = "feedpipe-leases"
STOP_GRACE_SECONDS = 10.0  # as stop_process's
AMQP_WAITING_QUEUES = (*QUEUES, *(level_name(level) for level in range(MAX_LEVEL + 1)))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` with a deadline; a test failure (not an error) when it never holds."""
    try:
        wait_for(condition, timeout, what, interval=0.25)
    except LocalBackendError as exc:
        raise AssertionError(str(exc)) from None


@dataclass
class Processes:
    """feedpipe processes started by a test, each in its own process group, logs kept."""

    env: dict[str, str]
    log_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    entry: tuple[str, ...] = ("-m", "feedpipe")  # or a wrapper, e.g. tests.faults.ENTRY

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, *self.entry, *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def worker(self, concurrency: int = 2, *extra: str) -> subprocess.Popen:
        return self._spawn(
            "worker", "worker", "-c", str(concurrency), "--without-mingle", "--without-gossip",
            "--without-heartbeat", *extra,
        )

    def consumer(self, *args: str) -> subprocess.Popen:
        return self._spawn("consumer", "consume", *args)

    def beat(self) -> subprocess.Popen:
        return self._spawn("beat", "beat")

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """A one-shot command (``feedpipe status``, ``rebuild``, ``dlq …``), output captured."""
        return subprocess.run(
            [sys.executable, *self.entry, *args],
            env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout,
        )

    def consume_until_idle(self, timeout: float = 240) -> dict[str, Any]:
        proc = self.consumer("--stop-when-idle")
        proc.wait(timeout)
        assert proc.returncode == 0, self.logs()
        return json.loads(self.last_log_line(proc))["consumed"]

    def last_log_line(self, proc: subprocess.Popen) -> str:
        index = self.procs.index(proc)
        path = next(self.log_dir.glob(f"*-{index}.log"))
        lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
        return lines[-1]

    def kill9(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        """SIGTERM every process group at once, then wait for each (SIGKILL after the grace
        ``stop_process`` gives): one after another, their shutdowns (a worker's takes ~1 s) add up.

        Beats go first, one at a time, newest first (each stops in ~0.2 s), so no standby is
        still waiting when the leader hands the lock back. (A standby told to stop used to take
        a lock that came free and schedule until killed; ``feedpipe.beat.run_beat`` now gives it
        straight back, a unit test pins that.)"""
        for proc in reversed(self.procs):
            if proc.args[-1] == "beat":
                stop_process(proc)
        running = [proc for proc in self.procs if proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stop_process(proc, grace=0)  # SIGTERM again, then SIGKILL

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-tail:]}" for p in sorted(self.log_dir.glob("*.log")))


# A worker killed with ``kill -9`` on a Redis broker leaves its tasks unacknowledged until the
# visibility timeout: the tests that kill one set this (``processes_env``) so they wait 6 s, not
# 10 s, for the redelivery. Their tasks took at most 2.8 s here: well inside it.
KILLED_WORKER_VISIBILITY = {"FEEDPIPE_TASK_VISIBILITY_TIMEOUT_SECONDS": "6"}


def marked_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings a test asks for with ``@pytest.mark.processes_env(FEEDPIPE_X="…")``, for its
    module's ``env`` fixture to apply over its own."""
    marker = request.node.get_closest_marker("processes_env")
    return dict(marker.kwargs) if marker else {}


def pipeline_env(aws_env: dict[str, str], redis_urls: tuple[str, str], **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEEDPIPE_", "AWS_"))}
    env.update(aws_env)
    env.update({
        "FEEDPIPE_REDIS_URL": redis_urls[0],
        "FEEDPIPE_BROKER_URL": redis_urls[1],
        "FEEDPIPE_TABLE_NAME": TABLE,
        "FEEDPIPE_LEASE_TABLE_NAME": LEASES,
        "FEEDPIPE_IDLE_POLL_SECONDS": "0.2",
        "FEEDPIPE_FANOUT_CHUNK_SIZE": "500",
        "FEEDPIPE_FOLLOWER_PAGE_SIZE": "1000",
        "FEEDPIPE_TASK_VISIBILITY_TIMEOUT_SECONDS": "10",
        "FEEDPIPE_LEASE_FAILOVER_SECONDS": "3",
        # moto's GSIs show a write at once: the re-checks of follows and unfollows still run, the
        # sooner (a test waits for every countdown: 1 s and 4 s, not 4 s and 7 s)
        "FEEDPIPE_GSI_LAG_SECONDS": "0.5",
        "FEEDPIPE_LOG_LEVEL": "INFO",
        "FEEDPIPE_METRICS_PORT": "0",  # several processes share this host; a test that scrapes sets ports
    })
    env.update(overrides)
    return env


class _GatheredPuts:
    """What ``AppWriter`` puts, kept for one BatchWriteItem per 25; its counter updates dropped."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def put_item(self, TableName: str, Item: dict[str, Any], **_: Any) -> None:  # noqa: N803 - boto3's names
        self.items.append(Item)

    def update_item(self, **_: Any) -> None:
        pass

    def delete_item(self, **_: Any) -> None:
        raise NotImplementedError("history is written, not taken back: use World.unfollow")


@dataclass
class World:
    """The app's data as written, and what every feed must end as (contract section 2)."""

    settings: Settings
    redis: redis.Redis | RedisCluster  # on a cluster, scan_iter walks every primary
    app: AppWriter = field(init=False)
    follows: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # author -> followers
    posts: dict[str, tuple[str, bool]] = field(default_factory=dict)  # post_id -> (author, live)
    written_at: dict[str, int] = field(default_factory=dict)  # post_id -> its created_at, as the clock's tick
    users: set[str] = field(default_factory=set)
    warm: set[str] = field(default_factory=set)
    clock: int = 0
    _broker: redis.Redis | None = field(default=None, repr=False)
    amqp_unacked: Callable[[], int] | None = field(default=None, repr=False)  # e.g. RabbitNode.unacked
    _history: dict[str, list[Post]] = field(default_factory=lambda: defaultdict(list), repr=False)  # historic_fanout

    def __post_init__(self) -> None:
        self.dynamodb = make_client("dynamodb")
        create_tables(self.dynamodb, TABLE, LEASES)
        self.app = AppWriter(self.dynamodb, self.redis, TABLE, transactional=False)
        self.stores = build_stores(self.settings, self.dynamodb)

    def user(self, *user_ids: str) -> None:
        for user_id in user_ids:
            self.app.create_user(user_id)
            self.users.add(user_id)

    def bulk_follow(self, followers: Iterable[str], author: str) -> None:
        """Set-up shortcut: follow edges written 25 at a time (the counters the app also
        updates do not affect feeds)."""
        followers = list(followers)
        items = []
        for f in followers:
            items.append({"PutRequest": {"Item": {
                "PK": {"S": keys.user_pk(f)}, "SK": {"S": keys.following_sk(author)},
                "GSI1PK": {"S": keys.user_pk(author)}, "GSI1SK": {"S": keys.follower_gsi1sk(f)},
                "follower_id": {"S": f}, "followed_id": {"S": author}, "status": {"S": "active"},
            }}})
        for i in range(0, len(items), 25):
            self.dynamodb.batch_write_item(RequestItems={TABLE: items[i:i + 25]})
        self.follows[author].update(followers)
        self.users.update(followers)

    def follow(self, follower: str, author: str) -> None:
        self.app.follow(follower, author)
        self.follows[author].add(follower)

    def unfollow(self, follower: str, author: str) -> None:
        self.app.unfollow(follower, author)
        self.follows[author].discard(follower)

    def post(self, author: str, post_id: str, visibility: str = "public") -> str:
        return self._post(self.app, author, post_id, visibility)

    def _post(self, app: AppWriter, author: str, post_id: str, visibility: str) -> str:
        self.clock += 1
        self.written_at[post_id] = self.clock
        created = (CLOCK_START + timedelta(seconds=self.clock)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        app.create_post(author, f"user_{author}", f"{post_id} says hello " * 3,
                        post_id=post_id, created_at=created, visibility=visibility)
        self.posts[post_id] = (author, visibility != "private")
        return post_id

    def load_history(self, users: Iterable[str], follows: Iterable[tuple[str, str]],
                     posts: Iterable[tuple[str, str, str]]) -> None:
        """Set-up shortcut for a big table: the app's own items (users, follow edges as
        (follower, author), posts as (author, post id, visibility)) and its Redis side effects,
        the items written 25 at a time by BatchWriteItem (one call where the app makes one per
        item); the counter updates the app makes beside them are left out (feeds never read them)."""
        sink = _GatheredPuts()
        app = AppWriter(sink, self.redis, TABLE, transactional=False)
        for user_id in users:
            app.create_user(user_id)
            self.users.add(user_id)
        for follower, author in follows:
            app.follow(follower, author)
            self.follows[author].add(follower)
        for author, post_id, visibility in posts:
            self._post(app, author, post_id, visibility)
        for i in range(0, len(sink.items), 25):
            request: dict[str, Any] = {TABLE: [{"PutRequest": {"Item": item}} for item in sink.items[i:i + 25]]}
            while request:
                request = self.dynamodb.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}

    def delete(self, post_id: str) -> None:
        self.app.delete_post(post_id)
        self.posts[post_id] = (self.posts[post_id][0], False)

    def remove(self, post_id: str) -> None:
        self.app.remove_post(post_id)
        self.posts[post_id] = (self.posts[post_id][0], False)

    def historic_fanout(self, post_id: str, warm: Iterable[str]) -> None:
        """A post delivered before feedpipe's consumer started (by an earlier pipeline), and
        the feeds of ``warm`` users cached from it."""
        image = from_image(self.dynamodb.get_item(
            TableName=TABLE, Key={"PK": {"S": keys.post_pk(post_id)}, "SK": {"S": keys.POST_SK}})["Item"])
        post = post_from_image(image)
        author = self.posts[post_id][0]
        add_post(self.stores, post, sorted(self.follows[author]))
        for user in self.follows[author]:
            self._history[user].append(post)
        for user in warm:
            # What rebuild_cache would cache from the durable feed (only history is in it yet),
            # without reading the table once per user: hundreds of moto Queries otherwise.
            newest = sorted(self._history.get(user, ()), key=lambda p: (p.created_at_ms, p.post_id), reverse=True)
            self.stores.cache.replace_feed(user, [self.stores.format.entry(p) for p in newest])
            self.warm.add(user)  # warm from its rebuild on, even with nothing to cache

    def mark_history_consumed(self) -> None:
        """Checkpoint the stream at its current end, as if a consumer had processed all that."""
        source = DynamoDBStreamSource(make_client("dynamodbstreams"), self.dynamodb, TABLE)
        leases = LeaseTable(self.dynamodb, LEASES, source.stream_id)
        for shard in source.list_shards():
            iterator, last = source.iterator(shard.shard_id, None), None
            while iterator:
                result = source.read(iterator, 1000)
                if not result.records:
                    break
                last = record_sequence(result.records[-1])
                iterator = result.next_iterator
            if last:
                leases.create(shard.shard_id, shard.parent_ids)
                lease = leases.take(leases.list()[shard.shard_id], "history")
                assert lease is not None
                leases.release(leases.checkpoint(lease, "history", last, None), "history")

    # -- what must be --------------------------------------------------------------------

    def expected_feeds(self) -> dict[str, set[str]]:
        """Every live post of every author a user follows now (no author here has more than
        the backfill's 20 live posts, so backfill and fan-out both deliver all of them)."""
        feeds: dict[str, set[str]] = {u: set() for u in self.users}
        for post_id, (author, live) in self.posts.items():
            if live:
                for follower in self.follows[author]:
                    feeds[follower].add(post_id)
        return feeds

    def durable_feeds(self) -> dict[str, set[str]]:
        feeds: dict[str, set[str]] = {u: set() for u in self.users}
        request: dict[str, Any] = {
            "TableName": TABLE,
            "FilterExpression": "begins_with(PK, :f)",
            "ExpressionAttributeValues": {":f": {"S": keys.FEED_PREFIX}},
            "ProjectionExpression": "PK, post_id",
        }
        while True:
            page = self.dynamodb.scan(**request)
            for item in page["Items"]:
                user = item["PK"]["S"][len(keys.FEED_PREFIX):]
                post_id = item["post_id"]["S"]
                assert post_id not in feeds.setdefault(user, set()), f"{post_id} twice in {user}'s feed"
                feeds[user].add(post_id)
            if "LastEvaluatedKey" not in page:
                return feeds
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def cached_feeds(self) -> dict[str, set[str]]:
        feeds = {}
        for key in self.redis.scan_iter(match=f"{keys.FEED_CACHE_PREFIX}*", count=1000):
            user = key.decode()[len(keys.FEED_CACHE_PREFIX):]
            feeds[user] = {json.loads(m)["postId"] for m in self.redis.zrange(key, 0, -1)}
        return feeds

    def warm_now(self) -> set[str]:
        """Who feedpipe counts as warm (a cached feed or a warm marker), as its scans see it."""
        return set(active_users(self.stores))

    def expected_cached(self, cached: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
        """Warm users' caches hold the newest items of their feed: all of it up to
        ``feed_max_length``. A longer feed's cache holds its newest ``feed_max_length``, or fewer
        once posts were retracted from a full cache (nothing puts an older post back until a
        rebuild): so it must be the newest items of the feed, as many as ``cached`` (default:
        the cache now) holds. Cold users have none, and neither has a warm user whose feed is
        empty (Redis keeps no empty sorted set: the marker does)."""
        expected, cap = self.expected_feeds(), self.settings.feed_max_length
        cached = self.cached_feeds() if cached is None else cached
        want = {}
        for user in self.warm:
            feed = sorted(expected[user], key=self.written_at.__getitem__)
            size = len(feed) if len(feed) <= cap else min(cap, len(cached.get(user, ())) or cap)
            if size:
                want[user] = set(feed[-size:])
        return want

    def feeds_right(self) -> bool:
        if self.durable_feeds() != self.expected_feeds():
            return False
        cached = self.cached_feeds()
        return cached == self.expected_cached(cached)

    def broker_busy(self) -> bool:
        """Tasks queued or running: a Redis broker keeps every delivered message in its
        ``unacked`` hash until the task ends (acks are late), retries waiting their countdown
        included. One cheap call, where ``feeds_right`` scans the whole table on moto, which
        the workers need too.

        On RabbitMQ: messages ready in feedpipe's queues or waiting out a retry countdown in
        Celery's delayed-delivery queues, by passive declares (instant), plus the unacknowledged
        ones (tasks running) from ``amqp_unacked``: only the management statistics know those,
        and they lag by the node's statistics interval (0.5 s on the tests' nodes,
        ``tests.chaos.rabbit``), so a wait ends up to that much late."""
        if is_amqp(self.settings.broker):
            depths = read_queue_depths(self.settings.broker, AMQP_WAITING_QUEUES)
            if not depths or any(depths.values()):  # an unreachable broker still holds its queues
                return True
            return self.amqp_unacked is not None and self.amqp_unacked() > 0
        if self._broker is None:
            self._broker = connect_broker(self.settings)
        if self._broker is None:
            return False  # not a Redis broker: nothing cheap to ask
        prefix = OwnKeys(self.settings.key_prefix).broker_prefix
        pipe = self._broker.pipeline(transaction=False)
        for name in [*QUEUES, "unacked"]:
            pipe.exists(f"{prefix}{name}")
        return any(pipe.execute())

    def settled(self) -> bool:
        """No task waiting or running, and every feed right: what end-to-end tests wait for."""
        return not self.broker_busy() and self.feeds_right()

    def assert_feeds_right(self) -> None:
        durable, expected = self.durable_feeds(), self.expected_feeds()
        wrong = {
            u: (sorted(durable.get(u, ())), sorted(expected[u])) for u in expected if durable.get(u) != expected[u]
        }
        assert not wrong, f"{len(wrong)} durable feeds wrong, e.g. {dict(list(wrong.items())[:5])}"
        cached = self.cached_feeds()
        want = self.expected_cached(cached)
        wrong_c = {u: (sorted(cached.get(u, ())), sorted(want.get(u, ()))) for u in set(cached) | set(want)
                   if cached.get(u) != want.get(u)}
        assert not wrong_c, f"{len(wrong_c)} cached feeds wrong, e.g. {dict(list(wrong_c.items())[:5])}"


def make_world(env: dict[str, str], real_redis: redis.Redis) -> World:
    settings = load_settings({k: v for k, v in env.items() if k.startswith("FEEDPIPE_")})
    return World(settings, real_redis)
