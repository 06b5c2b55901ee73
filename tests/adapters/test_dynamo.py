"""FeedTable and create_tables against moto's DynamoDB."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError

from feedpipe.adapters.dynamo import FeedTable
from feedpipe.adapters.tables import create_tables
from feedpipe.core.events import Post
from feedpipe.core.items import feed_item_template, feed_items

APP_TABLE = "SocialMediaApp"  # the names conftest.py creates
LEASE_TABLE = "feedpipe-leases"
EXCLUDED = frozenset({"private"})


def _post(post_id: str = "p1", created_at: str = "2024-01-15T10:30:00.123Z") -> Post:
    return Post(
        post_id=post_id,
        author_id="u_alice",
        author_username="alice",
        content_preview="hello",
        content_type="text",
        created_at=created_at,
        created_at_ms=0,
    )


def _items_for(users: list[str], post: Post) -> list[dict[str, Any]]:
    return list(feed_items(users, post, feed_item_template(post, "2024-01-15T10:30:01.000Z")))


def _feed_keys(client: Any) -> list[tuple[str, str]]:
    found = []
    request: dict[str, Any] = {"TableName": APP_TABLE}
    while True:
        page = client.scan(**request)
        found += [(i["PK"]["S"], i["SK"]["S"]) for i in page["Items"] if i["PK"]["S"].startswith("FEED#")]
        if "LastEvaluatedKey" not in page:
            return sorted(found)
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


# -- create_tables -------------------------------------------------------------------------------


def test_create_tables_twice_is_harmless(dynamodb):
    letters = "feedpipe-dead-letters"
    assert create_tables(dynamodb, APP_TABLE, LEASE_TABLE) == {
        APP_TABLE: "created", LEASE_TABLE: "created", letters: "created"}
    assert create_tables(dynamodb, APP_TABLE, LEASE_TABLE) == {
        APP_TABLE: "exists", LEASE_TABLE: "exists", letters: "exists"}
    assert set(dynamodb.list_tables()["TableNames"]) == {APP_TABLE, LEASE_TABLE, letters}


def test_app_table_is_the_seeds(dynamodb, tables):
    table = dynamodb.describe_table(TableName=APP_TABLE)["Table"]

    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {"PK": "HASH", "SK": "RANGE"}
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"GSI1", "GSI2", "GSI3"}
    for name, index in indexes.items():
        assert {k["AttributeName"]: k["KeyType"] for k in index["KeySchema"]} == {
            f"{name}PK": "HASH",
            f"{name}SK": "RANGE",
        }
        assert index["Projection"]["ProjectionType"] == "ALL"
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert table["LatestStreamArn"]


def test_lease_table_is_keyed_by_lease_key(dynamodb, tables):
    table = dynamodb.describe_table(TableName=LEASE_TABLE)["Table"]

    assert table["KeySchema"] == [{"AttributeName": "lease_key", "KeyType": "HASH"}]


# -- reads ------------------------------------------------------------------------------------------


def test_follower_pages_return_every_follower_across_pages(feed_table, app):
    followers = [f"u_{n:03d}" for n in range(237)]
    app.follow_many(followers, "u_alice")
    app.follow_many(["u_x", "u_y"], "u_bob")  # someone else's followers
    app.post("p1", "u_alice", "2024-01-15T10:30:00.123Z")  # same GSI1 partition, not a follower

    pages = list(feed_table.follower_pages("u_alice", page_size=50))

    assert len(pages) >= 5
    assert all(len(page) <= 50 for page in pages)
    found = [f for page in pages for f in page]
    assert sorted(found) == followers
    assert len(found) == len(set(found))


def test_follower_pages_of_someone_nobody_follows(feed_table, app):
    app.follow("u_alice", "u_bob")

    assert [f for page in feed_table.follower_pages("u_alice") for f in page] == []


def test_recent_posts_are_the_newest_live_ones_newest_first(feed_table, app):
    app.post("p1", "u_alice", "2024-01-10T08:00:00.000Z")
    app.post("p2", "u_alice", "2024-01-11T08:00:00.000Z")
    app.post("p3", "u_alice", "2024-01-12T08:00:00.000Z", is_deleted={"BOOL": True})
    app.post("p4", "u_alice", "2024-01-13T08:00:00.000Z")
    app.post("p5", "u_alice", "2024-01-14T08:00:00.000Z", visibility={"S": "private"})
    app.post("p6", "u_alice", "2024-01-15T08:00:00.000Z", is_deleted={"BOOL": True})
    app.post("p7", "u_bob", "2024-01-16T08:00:00.000Z")
    app.follow("u_carol", "u_alice")  # a FOLLOWER# item in the same partition

    assert [p.post_id for p in feed_table.recent_posts("u_alice", 2, EXCLUDED)] == ["p4", "p2"]
    assert [p.post_id for p in feed_table.recent_posts("u_alice", 20, EXCLUDED)] == ["p4", "p2", "p1"]
    assert feed_table.recent_posts("u_alice", 0, EXCLUDED) == []


def test_recent_posts_carry_the_posts_fields(feed_table, app):
    app.post("p1", "u_alice", "2024-01-15T10:30:00.123Z")

    (post,) = feed_table.recent_posts("u_alice", 5, EXCLUDED)

    assert post.post_id == "p1"
    assert post.author_id == "u_alice"
    assert post.author_username == "alice"
    assert post.content_preview == "post p1"
    assert post.created_at == "2024-01-15T10:30:00.123Z"
    assert post.created_at_ms == 1705314600123


def test_current_followers_reads_the_base_table_consistently(dynamodb, feed_table, app):
    # Edges with no GSI attributes: only a base-table read can see them.
    for follower in ("u_bob", "u_carol"):
        dynamodb.put_item(
            TableName=APP_TABLE,
            Item={"PK": {"S": f"USER#{follower}"}, "SK": {"S": "FOLLOWING#u_alice"}},
        )
    app.follow("u_dave", "u_zed")  # follows someone else
    requests: list[dict[str, Any]] = []
    dynamodb.meta.events.register(
        "before-parameter-build.dynamodb.BatchGetItem",
        lambda params, **_: requests.append(params),
    )

    found = feed_table.current_followers(["u_bob", "u_carol", "u_dave", "u_erin"], "u_alice")

    assert found == {"u_bob", "u_carol"}
    assert requests and all(r["RequestItems"][APP_TABLE]["ConsistentRead"] for r in requests)


# -- writes ---------------------------------------------------------------------------------------


def test_put_items_writes_in_calls_of_at_most_25(dynamodb, feed_table, batch_write_calls):
    users = [f"u_{n:02d}" for n in range(60)]

    written = feed_table.put_items(_items_for(users, _post()))

    assert written == 60
    assert sorted(len(call) for call in batch_write_calls) == [10, 25, 25]
    assert _feed_keys(dynamodb) == sorted((f"FEED#{u}", "2024-01-15T10:30:00.123Z#p1") for u in users)


def test_put_items_collapses_duplicate_keys(dynamodb, feed_table, batch_write_calls):
    users = [f"u_{n}" for n in range(10)]
    items = _items_for(users, _post()) * 3  # a redelivered chunk, three times over

    written = feed_table.put_items(items)

    assert written == 10
    assert [len(call) for call in batch_write_calls] == [10]
    assert len(_feed_keys(dynamodb)) == 10


def test_unprocessed_items_are_retried_until_written(dynamodb, tables, batch_write_calls):
    table = FeedTable(dynamodb, APP_TABLE, write_concurrency=1)
    held_back: list[dict[str, Any]] = []

    def hold_back_ten(params: dict[str, Any], **_: Any) -> None:
        if not held_back:  # first call only: DynamoDB "runs out of capacity" for 10 writes
            requests = params["RequestItems"][APP_TABLE]
            held_back.extend(requests[-10:])
            params["RequestItems"] = {APP_TABLE: requests[:-10]}

    def report_unprocessed(parsed: dict[str, Any], **_: Any) -> None:
        if len(batch_write_calls) == 1:
            parsed["UnprocessedItems"] = {APP_TABLE: held_back}

    dynamodb.meta.events.register("before-parameter-build.dynamodb.BatchWriteItem", hold_back_ten)
    dynamodb.meta.events.register("after-call.dynamodb.BatchWriteItem", report_unprocessed)
    users = [f"u_{n:02d}" for n in range(25)]

    written = table.put_items(_items_for(users, _post()))

    assert written == 25
    assert [len(call) for call in batch_write_calls] == [15, 10]
    assert _feed_keys(dynamodb) == sorted((f"FEED#{u}", "2024-01-15T10:30:00.123Z#p1") for u in users)


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any):
        yield self.data


def test_throttling_surfaces_as_client_error_when_retries_are_spent(aws, tables):
    client = boto3.client("dynamodb", config=Config(retries={"total_max_attempts": 1}))
    sent: list[str] = []

    def throttle(request: Any, **_: Any) -> AWSResponse:
        sent.append(request.url)
        body = {
            "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
            "message": "The level of configured provisioned throughput for the table was exceeded.",
        }
        headers = {"x-amzn-RequestId": "THROTTLED", "Content-Type": "application/x-amz-json-1.0"}
        return AWSResponse(request.url, 400, headers, _Body(json.dumps(body).encode()))

    client.meta.events.register("before-send.dynamodb.BatchWriteItem", throttle)
    table = FeedTable(client, APP_TABLE)

    with pytest.raises(ClientError) as caught:
        table.put_items(_items_for(["u_bob"], _post()))

    assert caught.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert len(sent) == 1
    table.close()


def test_delete_keys_removes_feed_items(dynamodb, feed_table):
    feed_table.put_items(_items_for(["u_bob", "u_carol"], _post()))
    key = {"PK": {"S": "FEED#u_bob"}, "SK": {"S": "2024-01-15T10:30:00.123Z#p1"}}

    assert feed_table.delete_keys([key, key]) == 1

    assert _feed_keys(dynamodb) == [("FEED#u_carol", "2024-01-15T10:30:00.123Z#p1")]


def test_feed_items_read_back_newest_first(feed_table):
    for day, post_id in [("10", "a"), ("12", "c"), ("11", "b")]:
        feed_table.put_items(_items_for(["u_bob"], _post(post_id, f"2024-01-{day}T08:00:00.000Z")))

    items = feed_table.feed_items("u_bob", limit=2)

    assert [i["post_id"] for i in items] == ["c", "b"]


def test_prebuilt_batch_writes_send_what_botocore_would(dynamodb, feed_table):
    from feedpipe.adapters.dynamo import make_client, use_prebuilt_batch_writes

    sent: list[tuple[dict, bytes]] = []

    def capture(request, **_):
        sent.append((dict(request.headers), request.body))

    plain = make_client("dynamodb", validate=False)
    fast = use_prebuilt_batch_writes(make_client("dynamodb", validate=False))
    for client in (plain, fast):
        client.meta.events.register("before-send.dynamodb.BatchWriteItem", capture)
        items = _items_for(["u_a", "u_b"], _post("p1", "2024-01-10T08:00:00.000Z"))
        FeedTable(client, feed_table.name, 1).put_items(items)

    (plain_headers, plain_body), (fast_headers, fast_body) = sent
    assert json.loads(fast_body) == json.loads(plain_body)
    same = ("X-Amz-Target", "Content-Type")
    assert {h: fast_headers[h] for h in same} == {h: plain_headers[h] for h in same}
    assert [i["post_id"] for i in feed_table.feed_items("u_a")] == ["p1"]  # moto accepted it
