"""Three ``feedpipe consume`` processes sharing a 4-shard Kinesis stream (kinesalite) that
carries the app's table changes, as DynamoDB's Kinesis destination does. One is killed with
``kill -9`` mid-stream: the others take its shards within the failover time, and every feed
ends exactly as without the crash. The survivors then stop on SIGTERM and hand back."""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from datetime import datetime
from typing import Any

import boto3
import pytest

from feedpipe.adapters.leases import LeaseTable
from feedpipe.adapters.streams import DynamoDBStreamSource
from tests.e2e.harness import LEASES, TABLE, Processes, World, make_world, pipeline_env, wait_until

pytestmark = pytest.mark.e2e

SHARDS = 4
FAILOVER = 3.0


def _kinesis(url: str) -> Any:
    return boto3.client("kinesis", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local")


def _app_traffic(world: World, rng: random.Random) -> None:
    users = [f"u{i:02d}" for i in range(30)]
    world.user(*users)
    for user in users:
        for other in rng.sample([u for u in users if u != user], 5):
            world.follow(user, other)
    for n in range(120):
        world.post(rng.choice(users), f"p{n:03d}")
    for post_id in rng.sample(sorted(world.posts), 20):
        world.delete(post_id)
    for author, followers in sorted(world.follows.items())[:10]:
        world.unfollow(sorted(followers)[0], author)


def _mirror_into_kinesis(world: World, kinesis: Any, stream: str) -> int:
    """Every change record of the table, put into Kinesis as DynamoDB's destination writes them."""
    source = DynamoDBStreamSource(boto3.client("dynamodbstreams"), world.dynamodb, TABLE)
    (shard,) = source.list_shards()
    iterator, entries = source.iterator(shard.shard_id, None), []
    while iterator:
        result = source.read(iterator, 1000)
        if not result.records:
            break
        for record in result.records:
            body = dict(record["dynamodb"])
            body.pop("SequenceNumber", None)
            created = body.get("ApproximateCreationDateTime")
            if isinstance(created, datetime):
                body["ApproximateCreationDateTime"] = int(created.timestamp() * 1000)
            change = {"eventID": record["eventID"], "eventName": record["eventName"], "eventSource": "aws:dynamodb",
                      "recordFormat": "application/json", "tableName": TABLE, "awsRegion": "us-east-1",
                      "dynamodb": body}
            key = body["Keys"]["PK"]["S"] + "|" + body["Keys"]["SK"]["S"]
            entries.append({"Data": json.dumps(change).encode(), "PartitionKey": key})
        iterator = result.next_iterator
    for i in range(0, len(entries), 500):
        kinesis.put_records(StreamName=stream, Records=entries[i:i + 500])
    return len(entries)


def test_a_consumer_killed_among_three_loses_nothing(
    aws_env, redis_urls, real_redis, tmp_path, kinesalite_server
) -> None:
    kinesis = _kinesis(kinesalite_server.url)
    stream = f"changes-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=stream, ShardCount=SHARDS)
    wait_until(lambda: kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"][
        "StreamStatus"] == "ACTIVE", 30, "the stream")
    env = pipeline_env(aws_env, redis_urls, FEEDPIPE_SOURCE="kinesis", FEEDPIPE_KINESIS_STREAM=stream,
                       AWS_ENDPOINT_URL_KINESIS=kinesalite_server.url, FEEDPIPE_RECORDS_PER_READ="3",
                       FEEDPIPE_LEASE_FAILOVER_SECONDS=str(FAILOVER))
    world = make_world(env, real_redis)
    _app_traffic(world, random.Random(11))
    records = _mirror_into_kinesis(world, kinesis, stream)
    assert records > 500
    arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
    leases = LeaseTable(world.dynamodb, LEASES, arn)

    procs = Processes(env, tmp_path)
    try:
        procs.worker()
        consumers = [procs.consumer() for _ in range(3)]
        wait_until(lambda: len({lease.owner for lease in leases.list().values() if lease.checkpoint}) >= 2,
                   60, "several consumers to checkpoint")
        victim_owner = next(lease.owner for lease in leases.list().values() if lease.checkpoint and lease.owner)
        victim = next(p for p in consumers if f":{p.pid}:" in str(victim_owner))
        procs.kill9(victim)
        killed_at = time.monotonic()

        wait_until(lambda: all(lease.owner not in (None, victim_owner) for lease in leases.list().values()),
                   30, "the survivors to take the dead consumer's shards")
        takeover = time.monotonic() - killed_at
        wait_until(world.settled, 180, "every feed to be right")
        world.assert_feeds_right()

        survivors = [p for p in consumers if p is not victim]
        for proc in survivors:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(30) for proc in survivors] == [0, 0], procs.logs()
        assert all(lease.owner is None for lease in leases.list().values())  # all handed back
    finally:
        procs.stop_all()
    assert takeover < 4 * FAILOVER, f"take-over took {takeover:.1f}s"
