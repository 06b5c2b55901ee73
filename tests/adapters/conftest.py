"""Fixtures for adapter tests: DynamoDB on moto (in-process), Redis on fakeredis."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
from moto import mock_aws

from feedpipe.adapters.dynamo import FeedTable, make_client
from feedpipe.adapters.redis_feeds import FeedCache
from feedpipe.adapters.tables import create_tables
from feedpipe.core.events import Post
from feedpipe.feeds.fanout import deliver_chunk, fan_out_post, retract_chunk, retract_post
from feedpipe.feeds.stores import Stores

APP_TABLE = "SocialMediaApp"
LEASE_TABLE = "feedpipe-leases"
FEED_MAX_LENGTH = 5
FEED_TTL_SECONDS = 3600


# -- Redis shared by several clients --------------------------------------------------------


@pytest.fixture(params=["fakeredis", "real Redis"])
def redis_clients(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """Makes clients of one Redis: fakeredis, and a real server (the Lua production runs)."""
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()
        return lambda: fakeredis.FakeRedis(server=server)
    real = request.getfixturevalue("real_redis")
    return lambda: redis.Redis(connection_pool=real.connection_pool)


# -- DynamoDB ----------------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[None]:
    """moto in-process, with dummy credentials and nothing from the developer's AWS setup."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    with mock_aws():
        yield


@pytest.fixture
def dynamodb(aws: None) -> Any:
    return make_client("dynamodb")


@pytest.fixture
def tables(dynamodb: Any) -> dict[str, str]:
    return create_tables(dynamodb, APP_TABLE, LEASE_TABLE)


@pytest.fixture
def feed_table(dynamodb: Any, tables: dict[str, str]) -> Iterator[FeedTable]:
    table = FeedTable(dynamodb, APP_TABLE)
    yield table
    table.close()


class AppWrites:
    """Items as the seed app writes them (createPost, followUser), applied as plain writes."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def follow(self, follower_id: str, followed_id: str, at: str = "2024-01-15T09:00:00.000Z") -> None:
        self.client.put_item(TableName=APP_TABLE, Item=self.follow_item(follower_id, followed_id, at))

    def follow_many(self, follower_ids: list[str], followed_id: str) -> None:
        items = [self.follow_item(f, followed_id, "2024-01-15T09:00:00.000Z") for f in follower_ids]
        for start in range(0, len(items), 25):
            requests = [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]
            self.client.batch_write_item(RequestItems={APP_TABLE: requests})

    @staticmethod
    def follow_item(follower_id: str, followed_id: str, at: str) -> dict[str, Any]:
        return {
            "PK": {"S": f"USER#{follower_id}"},
            "SK": {"S": f"FOLLOWING#{followed_id}"},
            "GSI1PK": {"S": f"USER#{followed_id}"},
            "GSI1SK": {"S": f"FOLLOWER#{follower_id}"},
            "GSI2PK": {"S": "FOLLOW_GRAPH"},
            "GSI2SK": {"S": f"{at}#{follower_id}#{followed_id}"},
            "follower_id": {"S": follower_id},
            "followed_id": {"S": followed_id},
            "follower_username": {"S": follower_id.removeprefix("u_")},
            "followed_username": {"S": followed_id.removeprefix("u_")},
            "created_at": {"S": at},
            "status": {"S": "active"},
            "notification_enabled": {"BOOL": True},
        }

    def post(self, post_id: str, author_id: str, created_at: str, **overrides: Any) -> None:
        item: dict[str, Any] = {
            "PK": {"S": f"POST#{post_id}"},
            "SK": {"S": "METADATA"},
            "GSI1PK": {"S": f"USER#{author_id}"},
            "GSI1SK": {"S": f"POST#{created_at}#{post_id}"},
            "GSI2PK": {"S": f"TIMELINE#{created_at[:10]}"},
            "GSI2SK": {"S": f"{created_at}#{post_id}"},
            "post_id": {"S": post_id},
            "author_id": {"S": author_id},
            "author_username": {"S": author_id.removeprefix("u_")},
            "content": {"S": f"post {post_id}"},
            "content_type": {"S": "text"},
            "media_urls": {"L": []},
            "created_at": {"S": created_at},
            "updated_at": {"S": created_at},
            "likes_count": {"N": "0"},
            "comments_count": {"N": "0"},
            "shares_count": {"N": "0"},
            "engagement_score": {"N": "0"},
            "visibility": {"S": "public"},
            "is_deleted": {"BOOL": False},
            "hashtags": {"L": []},
            "mentions": {"L": []},
        }
        item.update(overrides)
        self.client.put_item(TableName=APP_TABLE, Item=item)


@pytest.fixture
def app(dynamodb: Any, tables: dict[str, str]) -> AppWrites:
    return AppWrites(dynamodb)


@pytest.fixture
def batch_write_calls(dynamodb: Any) -> list[list[dict[str, Any]]]:
    """The write requests of every BatchWriteItem call the client makes, in call order."""
    calls: list[list[dict[str, Any]]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        body = json.loads(params["body"])
        calls.append([r for requests in body["RequestItems"].values() for r in requests])

    dynamodb.meta.events.register("before-call.dynamodb.BatchWriteItem", record)
    return calls


# -- Redis ---------------------------------------------------------------------------------------


@pytest.fixture
def redis_client() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def cache(redis_client: fakeredis.FakeRedis) -> FeedCache:
    return FeedCache(redis_client, max_length=FEED_MAX_LENGTH, ttl_seconds=FEED_TTL_SECONDS)


def publish(stores: Stores, post: Post) -> None:
    """A whole fan-out task in-process, with the chunks it hands out run right after it."""
    handed: list[list[str]] = []
    fan_out_post(stores, post, hand_out=handed.append)
    for chunk in handed:
        deliver_chunk(stores, post, chunk)


def retract(stores: Stores, post: Post) -> None:
    """A whole retraction task in-process, with the chunks it hands out run right after it."""
    handed: list[list[str]] = []
    retract_post(stores, post, hand_out=handed.append)
    for chunk in handed:
        retract_chunk(stores, post, chunk)


def inject(
    monkeypatch: pytest.MonkeyPatch, obj: Any, method: str, action: Callable[[], None], call: int = 1
) -> list[int]:
    """Run ``action`` once, right after the ``call``-th call of ``obj.method`` returns.
    Returns a one-item list counting the calls, so a test can check the point was reached."""
    real = getattr(obj, method)
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == call:
            action()
        return result

    monkeypatch.setattr(obj, method, wrapped)
    return calls
