"""Helpers for ``bench.fanout``: local backends, fast set-up, and the seed-style and raw paths
that feedpipe's fan-out is measured against."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
import redis
from boto3.dynamodb.conditions import Key as Cond
from botocore.config import Config

from feedpipe.adapters.tables import create_tables
from feedpipe.config import Settings, load_settings
from feedpipe.core import keys
from feedpipe.core.attributes import from_image
from feedpipe.core.events import Post
from feedpipe.core.items import WRITE_BATCH_LIMIT, feed_item_template, feed_items
from feedpipe.core.members import encode_member
from feedpipe.core.planning import chunked
from feedpipe.core.records import post_from_image
from feedpipe.dev.local import LOCAL_AWS_ENV, LocalRedis, MotoServer
from feedpipe.feeds.fanout import deliver_chunk, fan_out_post
from feedpipe.feeds.stores import Stores
from feedpipe.services import build_stores

TABLE = "SocialMediaApp"
LEASES = "feedpipe-leases"
AUTHOR = "author"
FEED_TTL_SECONDS = 3600
FEED_MAX_LENGTH = 100
SETUP_CONCURRENCY = 4


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def follower_ids(n: int) -> list[str]:
    return [f"u{i:07d}" for i in range(n)]


def warm_subset(followers: list[str], every: int) -> list[str]:
    """Every ``every``-th follower has a cached feed (is "active")."""
    return followers[::every]


# -- backends --------------------------------------------------------------------------------


class Backends:
    """A moto server and a real Redis, started for one benchmark and stopped after it."""

    def __init__(self) -> None:
        self.moto = MotoServer()
        self.redis_server = LocalRedis(durable=True)  # also the broker of the worker it starts
        self.redis: redis.Redis | None = None
        self._setup_client: Any = None

    def __enter__(self) -> Backends:
        self.moto.start()
        try:
            self.redis_server.start()
        except BaseException:
            self.moto.stop()
            raise
        self.redis = redis.Redis.from_url(self.redis_server.url)
        self.redis.config_set("notify-keyspace-events", "Kz")
        return self

    def __exit__(self, *_: object) -> None:
        if self.redis is not None:
            self.redis.close()
        self.redis_server.stop()
        self._kill_moto()

    def _kill_moto(self) -> None:
        """SIGKILL rather than ``MotoServer.stop``: its state is thrown away, and a moto that exits
        on SIGTERM spends seconds freeing it (about 2 s after 10,000 follow edges)."""
        proc = self.moto.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    @property
    def env(self) -> dict[str, str]:
        """Environment that points a child process at these backends."""
        return {**LOCAL_AWS_ENV, "AWS_ENDPOINT_URL": self.moto.url, "FEEDPIPE_REDIS_URL": self.redis_server.url}

    def client(self, max_pool: int = 16, validate: bool = False) -> Any:
        """A low-level DynamoDB client configured as feedpipe's ``make_client`` does."""
        return boto3.session.Session().client(
            "dynamodb",
            endpoint_url=self.moto.url,
            region_name=LOCAL_AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            config=Config(
                retries={"mode": "standard", "max_attempts": 5},
                max_pool_connections=max_pool,
                parameter_validation=validate,
            ),
        )

    def resource_table(self) -> Any:
        """The resource layer's Table (the seed's DocumentClient style)."""
        resource = boto3.session.Session().resource(
            "dynamodb",
            endpoint_url=self.moto.url,
            region_name=LOCAL_AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )
        return resource.Table(TABLE)

    def settings(self, chunk: int = 1000, concurrency: int = 4, page: int = 1000) -> Settings:
        return load_settings({
            "FEEDPIPE_TABLE_NAME": TABLE,
            "FEEDPIPE_LEASE_TABLE_NAME": LEASES,
            "FEEDPIPE_REDIS_URL": self.redis_server.url,
            "FEEDPIPE_FANOUT_CHUNK_SIZE": str(chunk),
            "FEEDPIPE_WRITE_CONCURRENCY": str(concurrency),
            "FEEDPIPE_FOLLOWER_PAGE_SIZE": str(page),
            "FEEDPIPE_FEED_MAX_LENGTH": str(FEED_MAX_LENGTH),
            "FEEDPIPE_FEED_TTL_SECONDS": str(FEED_TTL_SECONDS),
        })

    def stores(self, settings: Settings) -> Stores:
        return build_stores(settings, self.client(max_pool=settings.write_concurrency + 4))

    def fresh_world(self, followers: list[str], warm: list[str]) -> Post:
        """Empty moto and Redis, then the author, its followers, warm caches and one post."""
        assert self.redis is not None
        client = self.empty()
        write_plain(client, follow_items(followers, AUTHOR))
        warm_up(self.redis, warm)
        return put_post(client, AUTHOR)

    def empty(self) -> Any:
        """Reset moto (so table size never carries over), create the tables, flush Redis;
        returns the set-up client."""
        assert self.redis is not None
        self.moto.reset()
        if self._setup_client is None:
            self._setup_client = self.client()
        create_tables(self._setup_client, TABLE, LEASES)
        self.redis.flushall()
        return self._setup_client

    def moto_cpu_seconds(self) -> float:
        """CPU time the moto server process has used so far (it is the local bottleneck)."""
        assert self.moto.proc is not None
        with open(f"/proc/{self.moto.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- fast set-up -------------------------------------------------------------------------------


def follow_item(follower_id: str, followed_id: str, at: str) -> dict[str, Any]:
    """A follow edge exactly as the seed's ``followUser`` writes it (wire format)."""
    return {
        "PK": {"S": keys.user_pk(follower_id)},
        "SK": {"S": keys.following_sk(followed_id)},
        "GSI1PK": {"S": keys.user_pk(followed_id)},
        "GSI1SK": {"S": keys.follower_gsi1sk(follower_id)},
        "GSI2PK": {"S": "FOLLOW_GRAPH"},
        "GSI2SK": {"S": f"{at}#{follower_id}#{followed_id}"},
        "follower_id": {"S": follower_id},
        "followed_id": {"S": followed_id},
        "follower_username": {"S": f"user_{follower_id}"},
        "followed_username": {"S": f"user_{followed_id}"},
        "created_at": {"S": at},
        "status": {"S": "active"},
        "notification_enabled": {"BOOL": True},
    }


def follow_items(followers: Iterable[str], author: str) -> Iterator[dict[str, Any]]:
    at = iso_now()
    return (follow_item(f, author, at) for f in followers)


def key_only_follow_items(followers: Iterable[str], author: str) -> Iterator[dict[str, Any]]:
    """Follow edges with their keys only: quicker to load, and more of them per 1 MB page."""
    for f in followers:
        yield {
            "PK": {"S": keys.user_pk(f)}, "SK": {"S": keys.following_sk(author)},
            "GSI1PK": {"S": keys.user_pk(author)}, "GSI1SK": {"S": keys.follower_gsi1sk(f)},
        }


def write_plain(client: Any, items: Iterable[dict[str, Any]], concurrency: int = SETUP_CONCURRENCY) -> int:
    """Set-up writes: BatchWriteItem of 25, a few calls in flight (moto's fastest path)."""
    written = 0

    def send(group: list[dict[str, Any]]) -> None:
        client.batch_write_item(RequestItems={TABLE: group})

    with ThreadPoolExecutor(concurrency) as pool:
        for block in chunked(({"PutRequest": {"Item": i}} for i in items), WRITE_BATCH_LIMIT * 100):
            list(pool.map(send, chunked(block, WRITE_BATCH_LIMIT)))
            written += len(block)
    return written


def put_post(client: Any, author: str, post_id: str = "p1") -> Post:
    """The post item as the seed's ``createPost`` writes it (plain PutItem, no transaction)."""
    now = iso_now()
    item = {
        "PK": {"S": keys.post_pk(post_id)}, "SK": {"S": keys.POST_SK},
        "GSI1PK": {"S": keys.user_pk(author)}, "GSI1SK": {"S": keys.post_gsi1sk(now, post_id)},
        "GSI2PK": {"S": keys.timeline_gsi2pk(now[:10])}, "GSI2SK": {"S": f"{now}#{post_id}"},
        "post_id": {"S": post_id}, "author_id": {"S": author}, "author_username": {"S": f"user_{author}"},
        "content": {"S": f"{post_id}: a new post with some text " * 4}, "content_type": {"S": "text"},
        "media_urls": {"L": []}, "created_at": {"S": now}, "updated_at": {"S": now},
        "likes_count": {"N": "0"}, "comments_count": {"N": "0"}, "shares_count": {"N": "0"},
        "engagement_score": {"N": "0"}, "visibility": {"S": "public"}, "is_deleted": {"BOOL": False},
        "hashtags": {"L": []}, "mentions": {"L": []},
    }  # fmt: skip
    client.put_item(TableName=TABLE, Item=item)
    return post_from_image(from_image(item))


def warm_up(client: redis.Redis, users: Iterable[str]) -> None:
    """Give each user a cached feed (one older member, a TTL): what makes a follower warm."""
    pipe = client.pipeline(transaction=False)
    for user in users:
        key = keys.feed_cache(user)
        pipe.zadd(key, {json.dumps({"postId": "older"}): 1})
        pipe.expire(key, FEED_TTL_SECONDS)
    pipe.execute()


def missing_from_warm(client: redis.Redis, warm: list[str], member: str) -> int:
    """How many warm feeds do not hold ``member``."""
    pipe = client.pipeline(transaction=False)
    for user in warm:
        pipe.zscore(keys.feed_cache(user), member)
    return sum(score is None for score in pipe.execute())


# -- the three paths ----------------------------------------------------------------------------


def feedpipe_fanout(stores: Stores, post: Post) -> int:
    """feedpipe's fan-out with every handed-out chunk delivered inline, in this process."""
    return fan_out_post(stores, post, lambda chunk: deliver_chunk(stores, post, chunk))


def seed_fanout(table: Any, client: redis.Redis, post: Post, warm: set[str]) -> int:
    """The seed's ``distributeFeedUpdate``: ONE Query (no paging), ``batch_writer`` batches one
    after another, then ZADD, EXPIRE, ZREMRANGEBYRANK per warm follower (``addToFeed``).
    Returns how many followers the one Query returned."""
    result = table.query(
        IndexName=keys.GSI1,
        KeyConditionExpression=Cond("GSI1PK").eq(keys.user_pk(post.author_id))
        & Cond("GSI1SK").begins_with(keys.FOLLOWER_PREFIX),
    )
    followers = result["Items"]
    with table.batch_writer() as batch:
        for follower in followers:
            user = follower["follower_id"]
            batch.put_item(Item={
                "PK": keys.feed_pk(user), "SK": keys.feed_sk(post.created_at, post.post_id),
                "GSI1PK": keys.feed_gsi1pk(user), "GSI1SK": post.created_at,
                "user_id": user, "post_id": post.post_id, "author_id": post.author_id,
                "author_username": post.author_username, "content_preview": post.content_preview,
                "content_type": post.content_type, "created_at": post.created_at,
                "inserted_at": iso_now(), "engagement_score": Decimal(0), "is_promoted": False,
                "feed_rank": Decimal("1.0"),
            })  # fmt: skip
    member = encode_member(post)
    for follower in followers:
        user = follower["follower_id"]
        if user in warm:
            key = keys.feed_cache(user)
            client.zadd(key, {member: post.created_at_ms})
            client.expire(key, FEED_TTL_SECONDS)
            client.zremrangebyrank(key, 0, -(FEED_MAX_LENGTH + 1))
    return len(followers)


def raw_groups(followers: list[str], post: Post) -> list[list[dict[str, Any]]]:
    """The same feed items feedpipe writes, pre-built as BatchWriteItem request lists of 25."""
    template = feed_item_template(post, iso_now())
    requests = [{"PutRequest": {"Item": i}} for i in feed_items(followers, post, template)]
    return [requests[i : i + WRITE_BATCH_LIMIT] for i in range(0, len(requests), WRITE_BATCH_LIMIT)]


def raw_ceiling(client: Any, groups: list[list[dict[str, Any]]], concurrency: int) -> int:
    """Fire pre-built BatchWriteItem calls, ``concurrency`` in flight, nothing else."""
    with ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(lambda g: len(g) if client.batch_write_item(RequestItems={TABLE: g}) else 0, groups))


# -- watching warm feeds -------------------------------------------------------------------------


class WarmWatch:
    """Records when each warm feed is written (Redis keyspace notifications for sorted-set
    commands), so the time until *every* warm feed holds a new post can be read off."""

    SENTINEL = f"{keys.FEED_CACHE_PREFIX}__bench_sentinel__"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(f"__keyspace@0__:{keys.FEED_CACHE_PREFIX}*")
        self.pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        self.lock = threading.Lock()
        self.pending: set[str] = set()
        self.all_at: float | None = None
        self.done = threading.Event()
        self.synced = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def expect(self, warm: Iterable[str]) -> None:
        """Arm for one post: wait until every earlier event (set-up writes) has been seen."""
        with self.lock:
            self.pending = set()
        self.synced.clear()
        self.client.zadd(self.SENTINEL, {"sync": time.time()})
        if not self.synced.wait(10):
            raise RuntimeError("keyspace notifications never arrived")
        with self.lock:
            self.pending = {keys.feed_cache(u) for u in warm}
            self.all_at = None
            self.done.clear()

    def _listen(self) -> None:
        prefix = len("__keyspace@0__:")
        while not self.stop.is_set():
            message = self.pubsub.get_message(timeout=0.1)
            if not message or message.get("data") != b"zadd":
                continue
            now = time.perf_counter()
            key = message["channel"].decode()[prefix:]
            if key == self.SENTINEL:
                self.synced.set()
                continue
            with self.lock:
                if key in self.pending:
                    self.pending.discard(key)
                    if not self.pending:
                        self.all_at = now
                        self.done.set()

    def wait(self, timeout: float = 30.0) -> float | None:
        """When the last warm feed was written (perf_counter), or None if some never were."""
        self.done.wait(timeout)
        return self.all_at

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.pubsub.close()


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)


# -- where feedpipe's time goes ------------------------------------------------------------------


class Phases:
    """Wall time (and items written) per step of feedpipe's fan-out, by wrapping the methods
    of one ``Stores`` instance (feedpipe's code is not touched)."""

    def __init__(self, stores: Stores) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.written = 0
        table, cache = stores.table, stores.cache
        table.post_image = self._timed("post liveness reads", table.post_image)  # type: ignore[method-assign]
        table.put_items = self._timed("durable writes", table.put_items, count=True)  # type: ignore[method-assign]
        table.current_followers = self._timed("settle re-check reads", table.current_followers)  # type: ignore[method-assign]
        cache.add_to_warm_feeds = self._timed("redis feed updates", cache.add_to_warm_feeds)  # type: ignore[method-assign]
        pages = table.follower_pages_from

        def follower_pages(*args: Any, **kwargs: Any) -> Iterator[Any]:
            it = pages(*args, **kwargs)
            while True:
                start = time.perf_counter()
                page = next(it, None)
                self._add("follower paging", time.perf_counter() - start)
                if page is None:
                    return
                yield page

        table.follower_pages_from = follower_pages  # type: ignore[method-assign]

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def _timed(self, name: str, fn: Any, count: bool = False) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            finally:
                self._add(name, time.perf_counter() - start)
            if count:
                self.written += int(result)
            return result

        return wrapper

    def summary(self) -> dict[str, Any]:
        return {name: {"seconds": round(s, 3), "calls": self.calls[name]} for name, s in self.seconds.items()}


# -- the memory child -----------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child() -> None:
    """Run in a fresh process (``python -c``): one fan-out as a worker's planner task runs it,
    every full chunk handed out as the Celery message it would be (serialised, then dropped),
    the last chunk delivered here. Prints one JSON line of RSS figures in MB."""
    import gc
    import resource

    from feedpipe.core.events import PostPublished, to_payload

    settings = load_settings()
    stores = build_stores(settings)
    image = stores.table.post_image(os.environ["BENCH_POST_ID"])  # warms up the client as a first task would
    assert image is not None
    post = post_from_image(image)
    stores.cache.client.ping()
    gc.collect()
    base = _status_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS
        peak_reset = True
    except OSError:
        peak_reset = False
    payload = to_payload(PostPublished(post))
    sent = {"messages": 0, "bytes": 0}

    def hand_out(followers: list[str]) -> None:
        body = json.dumps([[{**payload, "followers": followers}]])  # the task's args, as kombu sends them
        sent["messages"] += 1
        sent["bytes"] += len(body)

    start = time.perf_counter()
    audience = fan_out_post(stores, post, hand_out)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "audience": audience,
        "seconds": round(seconds, 2),
        "rss_after_setup_mb": round(base, 1),
        "peak_rss_mb": round(_status_mb("VmHWM"), 1),
        "rss_after_mb": round(_status_mb("VmRSS"), 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_reset": peak_reset,
        "handed_out": sent,
    }))
