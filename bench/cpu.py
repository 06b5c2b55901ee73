"""Worker CPU per delivered feed item on the DynamoDB path, with the transport stubbed.

A ``before-send.dynamodb.BatchWriteItem`` hook answers every call with ``200
{"UnprocessedItems": {}}`` after botocore has validated (or not), serialized and signed the
request, so what is timed is the process CPU the worker spends per item, not the network.
Three paths over the same followers of one post, each in the same run:

- feedpipe: ``FeedTable.put_items(feed_items(...))`` on the worker's client,
  ``use_prebuilt_batch_writes(make_client("dynamodb", validate=False))``, one chunk of 1000
  followers at a time as ``deliver_chunk`` does,
  ``write_concurrency=1`` so all the CPU is on this thread and counted;
- the seed's style (baseline): the boto3 resource's ``Table.batch_writer()``, ``put_item`` of
  plain dicts, default client configuration (parameter validation on);
- the floor: building the same requests and ``json.dumps`` alone, no botocore.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse

from bench._util import cpu_seconds, make_post, set_local_aws_env, user_id
from bench.figures import Figure
from feedpipe.adapters.dynamo import FeedTable, make_client, use_prebuilt_batch_writes
from feedpipe.core.items import WRITE_BATCH_LIMIT, feed_item_template, feed_items
from feedpipe.core.planning import chunked, unique

TABLE = "SocialMediaApp"
CHUNK = 1000  # the default fanout_chunk_size: one deliver_chunk's worth of followers
TARGET_US = 25.0
OK_BODY = b'{"UnprocessedItems":{}}'


class _Raw:
    """The urllib3-like body botocore reads a response from (``stream()``, ``read()``)."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Any:
        yield self._body

    def read(self, amt: int | None = None) -> bytes:
        body, self._body = self._body, b""
        return body


class StubTransport:
    """Answers BatchWriteItem before anything is sent; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: Any, **_: Any) -> Any:
        self.calls += 1
        return AWSResponse(request.url, 200, {"x-amzn-requestid": "bench"}, _Raw(OK_BODY))

    def install(self, client: Any) -> StubTransport:
        client.meta.events.register("before-send.dynamodb.BatchWriteItem", self)
        return self


def _followers(n: int) -> list[str]:
    return [user_id(i) for i in range(n)]


def feedpipe_path(followers: list[str]) -> tuple[Any, Any]:
    """``run`` delivers every chunk the way ``deliver_chunk`` → ``add_post`` does (DynamoDB half)."""
    client = use_prebuilt_batch_writes(make_client("dynamodb", validate=False))  # as build_stores does
    stub = StubTransport().install(client)
    table = FeedTable(client, TABLE, write_concurrency=1)
    post = make_post()

    def run(users: list[str] = followers) -> int:
        written = 0
        for chunk in chunked(users, CHUNK):
            audience = unique(chunk)
            template = feed_item_template(post, datetime.now(UTC).isoformat(timespec="milliseconds"))
            written += table.put_items(feed_items(audience, post, template))
        return written

    return run, stub


def seed_path(followers: list[str]) -> tuple[Any, Any]:
    """The seed's ``distributeFeedUpdate``: a plain item per follower through the resource layer."""
    resource = boto3.session.Session().resource("dynamodb")
    stub = StubTransport().install(resource.meta.client)
    table = resource.Table(TABLE)
    post = make_post()

    def run(users: list[str] = followers) -> int:
        inserted_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        with table.batch_writer() as writer:
            for follower in users:
                writer.put_item(Item={
                    "PK": f"FEED#{follower}",
                    "SK": f"{post.created_at}#{post.post_id}",
                    "GSI1PK": f"FEED_MANAGEMENT#{follower}",
                    "GSI1SK": post.created_at,
                    "user_id": follower,
                    "post_id": post.post_id,
                    "author_id": post.author_id,
                    "author_username": post.author_username,
                    "content_preview": post.content_preview,
                    "content_type": post.content_type,
                    "created_at": post.created_at,
                    "inserted_at": inserted_at,
                    "engagement_score": 0,
                    "is_promoted": False,
                    "feed_rank": Decimal(1),
                })
        return len(users)

    return run, stub


def floor_path(followers: list[str]) -> Any:
    """The same BatchWriteItem bodies built and JSON-encoded, nothing else."""
    post = make_post()

    def run(users: list[str] = followers) -> int:
        written = 0
        for chunk in chunked(users, CHUNK):
            template = feed_item_template(post, datetime.now(UTC).isoformat(timespec="milliseconds"))
            for group in chunked(feed_items(chunk, post, template), WRITE_BATCH_LIMIT):
                json.dumps({"RequestItems": {TABLE: [{"PutRequest": {"Item": i}} for i in group]}})
                written += len(group)
        return written

    return run


def measure(n: int, rounds: int) -> dict[str, Any]:
    """µs of process CPU per item for each path: the least of ``rounds`` interleaved runs (the
    run least disturbed by neighbours on a shared machine)."""
    set_local_aws_env()
    followers = _followers(n)
    ours, our_stub = feedpipe_path(followers)
    seed, seed_stub = seed_path(followers)
    floor = floor_path(followers)
    paths = {"feedpipe": ours, "seed": seed, "floor": floor}
    for path in paths.values():  # load service models, build caches, pay first-call costs
        path(followers[:CHUNK])
    our_stub.calls = seed_stub.calls = 0
    samples: dict[str, list[float]] = {name: [] for name in paths}
    delivered: dict[str, set[int]] = {name: set() for name in paths}
    for _ in range(rounds):  # interleaved, so drift on the machine hits every path alike
        for name, path in paths.items():
            written = 0

            def once(path: Any = path) -> None:
                nonlocal written
                written = path()

            samples[name].append(cpu_seconds(once) / n * 1e6)
            delivered[name].add(written)
    calls = -(-n // 25) * rounds  # BatchWriteItem calls of at most 25 items
    return {
        **{name: min(values) for name, values in samples.items()},
        "every_item_delivered": all(d == {n} for d in delivered.values()),
        "calls_as_expected": our_stub.calls == calls and seed_stub.calls == calls,
    }


def run(short: bool) -> list[Figure]:
    n, rounds = (2_000, 2) if short else (20_000, 5)
    m = measure(n, rounds)
    ours, seed, floor = m["feedpipe"], m["seed"], m["floor"]
    return [
        Figure(
            name="worker CPU per feed item, DynamoDB path (stubbed transport)",
            value=round(ours, 1),
            unit="µs/item",
            baseline_name="seed style: Table.batch_writer()",
            baseline=round(seed, 1),
            better="lower",
            target=f"<= {TARGET_US:g} µs per delivered feed item",
            met=ours <= TARGET_US,
            notes=(
                f"process CPU, least of {rounds} interleaved rounds of {n:,} followers of one post; "
                "BatchWriteItem answered by a before-send hook after serialization and signing"
            ),
            extra={
                "floor_build_and_json_dumps_us": round(floor, 1),
                "feedpipe_over_floor": round(ours / floor, 2) if floor else None,
                "followers": n,
                "rounds": rounds,
                "every_item_delivered": m["every_item_delivered"],
                "batch_calls_as_expected": m["calls_as_expected"],
            },
        )
    ]
