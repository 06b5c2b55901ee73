"""The benchmarks' DynamoDB model (``bench.dynamo_model``) answers like moto for the calls
feedpipe makes: the same calls go to both, through feedpipe's own client, and must come back
the same. Where the model follows DynamoDB rather than moto (throttling, UnprocessedItems, the
25-request limit, a key after a page that Limit filled), the test says so."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from bench._fanout_util import follow_items, follower_ids
from bench.dynamo_capacity import Limits
from bench.dynamo_model import DynamoModel
from feedpipe.adapters.dynamo import FeedTable, use_prebuilt_batch_writes
from feedpipe.adapters.read_pace import ReadPace
from feedpipe.adapters.tables import create_tables
from feedpipe.core import keys

TABLE = "SocialMediaApp"
AUTHOR = "author"


def _client(retries: int = 5) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": retries}, parameter_validation=False)
    return use_prebuilt_batch_writes(boto3.session.Session().client("dynamodb", config=config))


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "t")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture(params=["moto", "model"])
def client(request: pytest.FixtureRequest, aws_env: None) -> Iterator[Any]:
    if request.param == "moto":
        with mock_aws():
            yield _seeded(_client())
    else:
        yield _seeded(DynamoModel(latency={}).attach(_client()))


def _seeded(client: Any) -> Any:
    create_tables(client, TABLE, "leases")
    edges = [{"PutRequest": {"Item": i}} for i in follow_items(follower_ids(230), AUTHOR)]
    for i in range(0, len(edges), 25):
        client.batch_write_item(RequestItems={TABLE: edges[i : i + 25]})
    return client


def test_follower_pages_walk_every_follower_in_order_with_limit_and_start_key(client: Any) -> None:
    table = FeedTable(client, TABLE, 1)
    pages = list(table.follower_pages_from(AUTHOR, page_size=100))
    assert [len(ids) for ids, _ in pages] == [100, 100, 30]
    assert [i for ids, _ in pages for i in ids] == follower_ids(230)
    start = pages[0][1]
    assert start is not None and set(start) == {"PK", "SK", "GSI1PK", "GSI1SK"}
    again = next(table.follower_pages_from(AUTHOR, page_size=100, start=start))
    assert again[0] == pages[1][0]


def test_base_table_reads_give_the_same_items(client: Any) -> None:
    table = FeedTable(client, TABLE, 1)
    assert table.followees(follower_ids(1)[0]) == [AUTHOR]
    assert table.current_followers([*follower_ids(3), "stranger"], AUTHOR) == set(follower_ids(3))
    got = client.get_item(TableName=TABLE, Key={"PK": {"S": "USER#u0000002"}, "SK": {"S": "FOLLOWING#author"}},
                          ConsistentRead=True, ProjectionExpression="follower_id, #s",
                          ExpressionAttributeNames={"#s": "status"})
    assert got["Item"] == {"follower_id": {"S": "u0000002"}, "status": {"S": "active"}}
    assert "Item" not in client.get_item(TableName=TABLE, Key={"PK": {"S": "USER#x"}, "SK": {"S": "PROFILE"}})


def test_newest_first_query_and_writes_then_deletes(client: Any) -> None:
    items = [{"PK": {"S": "FEED#u1"}, "SK": {"S": f"2026-01-0{d}#p{d}"}, "GSI1PK": {"S": "FEED_MANAGEMENT#u1"},
              "GSI1SK": {"S": f"2026-01-0{d}"}, "post_id": {"S": f"p{d}"}} for d in range(1, 6)]
    table = FeedTable(client, TABLE, 1)
    assert table.put_items(items) == 5
    assert [i["post_id"] for i in table.feed_items("u1", limit=3)] == ["p5", "p4", "p3"]
    assert table.delete_keys([{"PK": i["PK"], "SK": i["SK"]} for i in items[:4]]) == 4
    assert [i["post_id"] for i in table.feed_items("u1")] == ["p5"]


def test_pages_are_cut_at_one_megabyte_at_the_same_item(client: Any) -> None:
    big = "x" * 40_000
    items = [{"PutRequest": {"Item": {"PK": {"S": "FEED#big"}, "SK": {"S": f"{n:03d}"}, "blob": {"S": big}}}}
             for n in range(60)]
    for i in range(0, 60, 20):
        pending: dict[str, Any] = {TABLE: items[i : i + 20]}
        while pending:  # 800 KB a call: more than the model's partition takes in a second
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
    request = {"TableName": TABLE, "KeyConditionExpression": "PK = :pk",
               "ExpressionAttributeValues": {":pk": {"S": "FEED#big"}}, "ProjectionExpression": "SK"}
    first = client.query(**request)
    assert first["Count"] == 24 and first["LastEvaluatedKey"] == {"PK": {"S": "FEED#big"}, "SK": {"S": "023"}}
    rest = client.query(**request, ExclusiveStartKey=first["LastEvaluatedKey"])
    assert [i["SK"]["S"] for i in rest["Items"]][:2] == ["024", "025"]


def test_errors_have_the_same_codes(client: Any) -> None:
    def code(call: Any, **kwargs: Any) -> str:
        with pytest.raises(ClientError) as caught:
            call(**kwargs)
        return str(caught.value.response["Error"]["Code"])

    assert code(client.get_item, TableName=TABLE, Key={"PK": {"S": "x"}}) == "ValidationException"
    assert code(client.get_item, TableName="nope", Key={"PK": {"S": "x"}, "SK": {"S": "y"}}) \
        == "ResourceNotFoundException"
    assert code(client.query, TableName=TABLE, IndexName="GSI1", ConsistentRead=True,
                KeyConditionExpression="GSI1PK = :p", ExpressionAttributeValues={":p": {"S": "x"}}) \
        == "ValidationException"
    same = {"PutRequest": {"Item": {"PK": {"S": "a"}, "SK": {"S": "b"}}}}
    assert code(client.batch_write_item, RequestItems={TABLE: [same, same]}) == "ValidationException"


# -- where only the model can answer (moto never throttles) -----------------------------------


def _throttled_model(wcu: float, rcu: float = 40_000) -> tuple[DynamoModel, Any]:
    model = DynamoModel(latency={}, limits=Limits(table_wcu=wcu, table_rcu=rcu, partitions=1))
    client = model.attach(_client(retries=1))
    create_tables(client, TABLE, "leases")
    return model, client


def _feed_item(n: int) -> dict[str, Any]:
    return {"PK": {"S": f"FEED#u{n}"}, "SK": {"S": "t#p"}, "GSI1PK": {"S": f"FEED_MANAGEMENT#u{n}"},
            "GSI1SK": {"S": "t"}}


def test_batch_writes_beyond_capacity_come_back_unprocessed_in_the_request_shape(aws_env: None) -> None:
    model, client = _throttled_model(wcu=20)  # 10 feed items: each is 1 WCU + 1 WCU on GSI1
    requests = [{"PutRequest": {"Item": _feed_item(n)}} for n in range(25)]
    answer = client.batch_write_item(RequestItems={TABLE: requests})
    assert answer["UnprocessedItems"] == {TABLE: requests[10:]}
    assert model.usage(TABLE).wcu == 20
    with pytest.raises(ClientError) as caught:  # nothing left at all: the whole call is refused
        client.batch_write_item(RequestItems={TABLE: requests[10:]})
    assert caught.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    with pytest.raises(ClientError) as caught:
        client.put_item(TableName=TABLE, Item=_feed_item(99))
    assert caught.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    too_many = [{"PutRequest": {"Item": _feed_item(n)}} for n in range(26)]
    with pytest.raises(ClientError, match="ValidationException"):  # moto accepts 26; AWS does not
        client.batch_write_item(RequestItems={TABLE: too_many})


def test_reads_cost_half_a_unit_per_4_kb_when_eventually_consistent(aws_env: None) -> None:
    model, client = _throttled_model(wcu=40_000)
    model.load(TABLE, follow_items(follower_ids(100), AUTHOR))
    usage = model.usage(TABLE)
    FeedTable(client, TABLE, 1).current_followers(follower_ids(100), AUTHOR)  # 100 strong reads of < 4 KB
    assert usage.rcu == 100
    before = usage.rcu
    list(FeedTable(client, TABLE, 1).follower_pages(AUTHOR))  # one GSI page of ~30 KB, eventually consistent
    assert usage.rcu - before == 4


def test_a_page_filled_by_limit_still_carries_a_start_key_as_dynamodb_does(aws_env: None) -> None:
    model, client = _throttled_model(wcu=40_000)
    model.load(TABLE, follow_items(follower_ids(10), AUTHOR))
    pages = list(FeedTable(client, TABLE, 1).follower_pages(AUTHOR, page_size=5))
    assert [len(p) for p in pages] == [5, 5, 0]  # moto ends at [5, 5]: it looks one item ahead


def test_a_query_asked_for_its_consumed_capacity_reports_what_it_charged(aws_env: None) -> None:
    model, client = _throttled_model(wcu=40_000)
    model.load(TABLE, follow_items(follower_ids(100), AUTHOR))
    charged: list[tuple[str, int]] = []
    table = FeedTable(client, TABLE, 1)
    table.read_pace = ReadPace(lambda key, cost: charged.append((key, cost)) is None, 3000, 5)
    before = model.usage(TABLE).rcu
    assert len([i for page in table.follower_pages(AUTHOR) for i in page]) == 100
    assert charged == [(keys.user_pk(AUTHOR), 4)] and model.usage(TABLE).rcu - before == 4
