"""DynamoDB Streams read on a moto server (moto in-process answers no DescribeStream): records
kept in the wire format mean what botocore's parsed records mean, and a GetRecords error is
still botocore's (and feedpipe's) to map."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import botocore.session
import pytest

from feedpipe.adapters.dynamo import make_client
from feedpipe.adapters.streams import DynamoDBStreamSource, _take_records, keep_records_raw
from feedpipe.adapters.tables import create_tables
from feedpipe.core.records import read_record
from feedpipe.dev.local import LOCAL_AWS_ENV, MotoServer
from tests.adapters.conftest import APP_TABLE, LEASE_TABLE, AppWrites


@pytest.fixture(scope="module")
def server() -> Iterator[MotoServer]:
    moto = MotoServer().start()
    yield moto
    moto.stop()


@pytest.fixture
def dynamodb(server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    server.reset()
    for name, value in {**LOCAL_AWS_ENV, "AWS_ENDPOINT_URL": server.url}.items():
        monkeypatch.setenv(name, value)
    client = make_client("dynamodb")
    create_tables(client, APP_TABLE, LEASE_TABLE)
    return client


@pytest.fixture
def app(dynamodb: Any) -> AppWrites:
    return AppWrites(dynamodb)


def _read_all(source: DynamoDBStreamSource) -> list[dict[str, Any]]:
    """Every record, one a read: each next read goes on from the iterator the last one gave."""
    records: list[dict[str, Any]] = []
    for shard in source.list_shards():
        iterator = source.iterator(shard.shard_id, None)
        while iterator is not None:
            result = source.read(iterator, 1)
            if not result.records:
                break
            records += result.records
            iterator = result.next_iterator
    return records


def test_raw_records_read_as_botocore_parsed_ones_do(dynamodb: Any, app: AppWrites) -> None:
    app.post("p1", "u_alice", "2024-01-15T10:30:00.123Z", picture={"B": b"\x00\xffbytes"})
    app.follow("u_bob", "u_alice")
    dynamodb.delete_item(TableName=APP_TABLE, Key={"PK": {"S": "POST#p1"}, "SK": {"S": "METADATA"}})

    raw = _read_all(DynamoDBStreamSource(keep_records_raw(make_client("dynamodbstreams")), dynamodb, APP_TABLE))
    parsed = _parsed_by_botocore(dynamodb)

    assert [r["eventName"] for r in raw] == ["INSERT", "INSERT", "REMOVE"]
    assert isinstance(raw[0]["dynamodb"]["ApproximateCreationDateTime"], int | float)  # epoch seconds, as sent
    assert raw[0]["dynamodb"]["NewImage"]["picture"]["B"] == "AP9ieXRlcw=="  # base64, as a Lambda event has it
    assert [_meaning(r) for r in raw] == [_meaning(r) for r in parsed]
    assert all(event is not None for event, _, _ in map(_meaning, raw))


def test_only_the_records_of_a_good_answer_skip_botocores_parser() -> None:
    ok = {"status_code": 200, "body": b'{"Records": [{"eventName": "INSERT"}], "NextShardIterator": "it"}'}
    error = {"status_code": 400, "body": b'{"__type": "ExpiredIteratorException", "message": "expired"}'}
    taken: dict[str, Any] = {}
    untouched: dict[str, Any] = {}

    other_protocol: dict[str, Any] = {}
    get_records = botocore.session.get_session().get_service_model("dynamodbstreams").operation_model("GetRecords")
    cbor = SimpleNamespace(service_model=SimpleNamespace(resolved_protocol="smithy-rpc-v2-cbor"))

    _take_records(operation_model=get_records, response_dict=ok, customized_response_dict=taken)
    _take_records(operation_model=get_records, response_dict=dict(error), customized_response_dict=untouched)
    _take_records(operation_model=cbor, response_dict=dict(ok), customized_response_dict=other_protocol)

    assert taken == {"Records": [{"eventName": "INSERT"}]} and json.loads(ok["body"]) == {"NextShardIterator": "it"}
    assert untouched == {}  # errors are botocore's to parse, and feedpipe's to map
    assert other_protocol == {}  # a body that is not JSON is botocore's whole


def _meaning(record: dict[str, Any]) -> tuple[Any, str | None, int | None]:
    envelope = read_record(record)
    return envelope.event, envelope.sequence_number, envelope.time_ms


def _parsed_by_botocore(dynamodb: Any) -> list[dict[str, Any]]:
    """The same records through a client with no hook: botocore parses every attribute."""
    client = make_client("dynamodbstreams")
    arn = dynamodb.describe_table(TableName=APP_TABLE)["Table"]["LatestStreamArn"]
    records: list[dict[str, Any]] = []
    for shard in client.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        start = client.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")
        records += client.get_records(ShardIterator=start["ShardIterator"], Limit=1000)["Records"]
    return records
