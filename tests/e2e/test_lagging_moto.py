"""The lagging moto server (``tests.e2e.lagging_moto``) lags the way DynamoDB does: a GSI1 Query
sees an insert, an update and a delete only once the lag has passed, base-table reads see
everything at once, and stream records of one item stay in order while different items'
records may overtake each other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from feedpipe.adapters.dynamo import make_client
from feedpipe.adapters.streams import DynamoDBStreamSource
from feedpipe.adapters.tables import create_tables
from feedpipe.dev.local import LOCAL_AWS_ENV
from tests.e2e.harness import LEASES, TABLE, wait_until
from tests.e2e.lagging_moto import LaggingMotoServer

LAG = 1.5


@pytest.fixture(scope="module")
def server() -> Iterator[LaggingMotoServer]:
    moto = LaggingMotoServer().start()
    yield moto
    moto.stop()


@pytest.fixture
def dynamodb(server: LaggingMotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    server.reset()
    for name, value in {**LOCAL_AWS_ENV, "AWS_ENDPOINT_URL": server.url}.items():
        monkeypatch.setenv(name, value)
    client = make_client("dynamodb")
    create_tables(client, TABLE, LEASES)
    return client


def _put(dynamodb: Any, follower: str, status: str = "active") -> None:
    dynamodb.put_item(TableName=TABLE, Item={
        "PK": {"S": f"USER#{follower}"}, "SK": {"S": "FOLLOWING#alice"},
        "GSI1PK": {"S": "USER#alice"}, "GSI1SK": {"S": f"FOLLOWER#{follower}"}, "status": {"S": status},
    })


def _gsi1(dynamodb: Any) -> dict[str, str]:
    items = dynamodb.query(TableName=TABLE, IndexName="GSI1", KeyConditionExpression="GSI1PK = :a",
                           ExpressionAttributeValues={":a": {"S": "USER#alice"}})["Items"]
    return {i["GSI1SK"]["S"]: i["status"]["S"] for i in items}


def _base(dynamodb: Any, follower: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = dynamodb.get_item(
        TableName=TABLE, Key={"PK": {"S": f"USER#{follower}"}, "SK": {"S": "FOLLOWING#alice"}}).get("Item")
    return item


def test_gsi1_shows_inserts_updates_and_deletes_only_after_the_lag(server: LaggingMotoServer, dynamodb: Any) -> None:
    _put(dynamodb, "old")
    server.set_lag(LAG, LAG)
    _put(dynamodb, "una")
    dynamodb.update_item(TableName=TABLE, Key={"PK": {"S": "USER#old"}, "SK": {"S": "FOLLOWING#alice"}},
                         UpdateExpression="SET #s = :s", ExpressionAttributeNames={"#s": "status"},
                         ExpressionAttributeValues={":s": {"S": "muted"}})
    assert _gsi1(dynamodb) == {"FOLLOWER#old": "active"}  # the insert unseen, the update not yet
    assert _base(dynamodb, "una") is not None  # the base table has it at once
    assert server.pending()["gsi_pending"] == 2

    wait_until(lambda: _gsi1(dynamodb) == {"FOLLOWER#old": "muted", "FOLLOWER#una": "active"}, 10, "GSI1 to catch up")
    assert server.caught_up()

    dynamodb.delete_item(TableName=TABLE, Key={"PK": {"S": "USER#una"}, "SK": {"S": "FOLLOWING#alice"}})
    assert _base(dynamodb, "una") is None
    assert "FOLLOWER#una" in _gsi1(dynamodb)  # the old image, until the lag has passed
    wait_until(lambda: _gsi1(dynamodb) == {"FOLLOWER#old": "muted"}, 10, "GSI1 to show the delete")


def test_one_items_stream_records_stay_in_order_while_other_items_overtake(
    server: LaggingMotoServer, dynamodb: Any
) -> None:
    server.set_lag(stream_max=1.0, seed=7)
    writes = []
    for n in range(20):
        follower = f"u{n % 4}"
        _put(dynamodb, follower, status=f"v{n}")
        writes.append((f"USER#{follower}", f"v{n}"))
    wait_until(server.caught_up, 10, "every record to reach the stream")

    source = DynamoDBStreamSource(make_client("dynamodbstreams"), dynamodb, TABLE)
    (shard,) = source.list_shards()
    records = source.read(source.iterator(shard.shard_id, None), 1000).records
    read = [(r["dynamodb"]["Keys"]["PK"]["S"], r["dynamodb"]["NewImage"]["status"]["S"]) for r in records]
    assert sorted(read) == sorted(writes)
    for follower in {pk for pk, _ in writes}:  # each item's records in write order
        assert [v for pk, v in read if pk == follower] == [v for pk, v in writes if pk == follower]
    assert read != writes  # and other items' records overtook some
