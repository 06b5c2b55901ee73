"""The narrowed moto (tests/e2e/fast_moto.py) the end-to-end tests run on answers every call
feedpipe and the tests make exactly as moto does: the same items, pages and keys."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from feedpipe.adapters.tables import create_tables
from feedpipe.core import keys
from feedpipe.dev.local import LOCAL_AWS_ENV, MotoServer

TABLE, LEASES = "SocialMediaApp", "feedpipe-leases"


@pytest.fixture(scope="module")
def clients() -> Iterator[tuple[Any, Any]]:
    plain, fast = MotoServer().start(), MotoServer(module="tests.e2e.fast_moto").start()
    try:
        made = []
        for server in (plain, fast):
            client = boto3.client("dynamodb", endpoint_url=server.url, region_name=LOCAL_AWS_ENV["AWS_DEFAULT_REGION"],
                                  aws_access_key_id="x", aws_secret_access_key="x")
            create_tables(client, TABLE, LEASES)
            _fill(client)
            made.append(client)
        yield made[0], made[1]
    finally:
        plain.stop()
        fast.stop()


def _fill(client: Any) -> None:
    """Follow edges of two authors, posts, feed items, then overwrites and deletes."""
    requests = []
    for n in range(120):
        for author in ("star", "alice") if n % 3 == 0 else ("star",):
            requests.append({"PK": {"S": keys.user_pk(f"f{n:03d}")}, "SK": {"S": keys.following_sk(author)},
                             "GSI1PK": {"S": keys.user_pk(author)}, "GSI1SK": {"S": keys.follower_gsi1sk(f"f{n:03d}")},
                             "follower_id": {"S": f"f{n:03d}"}, "status": {"S": "active"}})
    for n in range(40):
        created = f"2026-11-25T10:{n:02d}:00.000Z"
        requests.append({"PK": {"S": keys.post_pk(f"p{n}")}, "SK": {"S": keys.POST_SK},
                         "GSI1PK": {"S": keys.user_pk("star" if n % 2 else "alice")},
                         "GSI1SK": {"S": f"POST#{created}#p{n}"}, "post_id": {"S": f"p{n}"},
                         "is_deleted": {"BOOL": n % 7 == 0}, "created_at": {"S": created}})
        requests.append({"PK": {"S": keys.feed_pk("f001")}, "SK": {"S": f"{created}#p{n}"},
                         "post_id": {"S": f"p{n}"}, "author_id": {"S": "star"}})
    for i in range(0, len(requests), 25):
        client.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": r}} for r in requests[i:i + 25]]})
    client.delete_item(TableName=TABLE, Key={"PK": {"S": keys.user_pk("f003")}, "SK": {"S": keys.following_sk("star")}})
    client.put_item(TableName=TABLE, Item={**requests[-1], "author_id": {"S": "alice"}})  # an overwrite


def _all_pages(client: Any, call: str, **request: Any) -> list[Any]:
    pages = []
    while True:
        page = getattr(client, call)(**request)
        pages.append((page.get("Items"), page.get("LastEvaluatedKey"), page["Count"]))
        if "LastEvaluatedKey" not in page:
            return pages
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


REQUESTS = {
    "followers, GSI1, pages of 25": ("query", {
        "IndexName": "GSI1", "KeyConditionExpression": "GSI1PK = :a AND begins_with(GSI1SK, :f)",
        "ExpressionAttributeValues": {":a": {"S": keys.user_pk("star")}, ":f": {"S": "FOLLOWER#"}}, "Limit": 25}),
    "newest posts, GSI1, filtered": ("query", {
        "IndexName": "GSI1", "KeyConditionExpression": "GSI1PK = :a AND begins_with(GSI1SK, :p)",
        "FilterExpression": "is_deleted = :no", "ScanIndexForward": False, "Limit": 7,
        "ExpressionAttributeValues": {":a": {"S": keys.user_pk("alice")}, ":p": {"S": "POST#"},
                                      ":no": {"BOOL": False}}}),
    "a feed, newest first, projected": ("query", {
        "KeyConditionExpression": "PK = :pk", "ScanIndexForward": False, "ProjectionExpression": "SK, post_id",
        "ExpressionAttributeValues": {":pk": {"S": keys.feed_pk("f001")}}, "Limit": 9}),
    "a scan in pages of 30": ("scan", {"Limit": 30}),
    "a filtered count scan": ("scan", {
        "Select": "COUNT", "FilterExpression": "begins_with(PK, :f) AND post_id = :p",
        "ExpressionAttributeValues": {":f": {"S": keys.FEED_PREFIX}, ":p": {"S": "p39"}}}),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_the_narrowed_moto_answers_as_moto_does(clients, name):
    plain, fast = clients
    call, request = REQUESTS[name]
    expected = _all_pages(plain, call, TableName=TABLE, **request)
    assert _all_pages(fast, call, TableName=TABLE, **request) == expected
    assert sum(count for _, _, count in expected) > 0


KEEPS_NO_ITEM = """
import boto3, os
from moto import mock_aws
from moto.core.model_instances import model_data, reset_model_data
from feedpipe.adapters.tables import create_tables
from tests.e2e import fast_moto
os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
if "--narrowed" in __import__("sys").argv:
    fast_moto.install()
with mock_aws():
    client = boto3.client("dynamodb")
    create_tables(client, "T", "L")
    for n in range(0, 200, 25):
        client.batch_write_item(RequestItems={"T": [{"PutRequest": {"Item": {
            "PK": {"S": f"FEED#u{i % 7}"}, "SK": {"S": f"{i:05d}"}, "post_id": {"S": f"p{i}"}}}}
            for i in range(n, n + 25)]})
    reset_model_data()  # what a moto reset does first: every instance list emptied
    for _ in range(3):
        client.scan(TableName="T", ProjectionExpression="PK, post_id")
    print(sum(len(model.instances_tracked) for models in model_data.values() for model in models.values()))
"""


def _items_kept(*argv: str) -> int:
    out = subprocess.run([sys.executable, "-c", KEEPS_NO_ITEM, *argv], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_the_narrowed_moto_keeps_no_item_a_read_copied() -> None:
    """Plain moto keeps every model instance it ever made (three Scans of 200 items: 600 copies,
    plus projections); the narrowed one keeps none, before or after a reset, so its memory
    stays flat however much is read."""
    assert _items_kept() >= 600
    assert _items_kept("--narrowed") == 0
