"""KinesisSource on a real kinesalite: a split and a merge read parents first by the consumer,
every change once, poison data dead-lettered; plus ListShards paging and error mapping (stubbed,
since kinesalite ignores MaxResults and never throttles)."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from feedpipe.adapters.kinesis import KinesisSource
from feedpipe.adapters.leases import SHARD_END
from feedpipe.adapters.streams import IteratorExpiredError, Shard, StreamError, ThrottledError
from feedpipe.consumers.consumer import StreamConsumer
from feedpipe.consumers.leasing import LeaseCoordinator
from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.core.events import PostPublished
from feedpipe.core.records import parse_record, read_record
from feedpipe.dev.kinesalite import Kinesalite
from feedpipe.dev.local import wait_for
from tests.fakes import FakeDeadLetters, FakeDispatcher, FakeLeaseTable

HALF = 2**127  # the hash key where a 2-shard stream's shards meet
WRITER_BATCHES = 40  # the background writer's cap, so a stuck reshard cannot run it forever


# -- fixtures and helpers --------------------------------------------------------------------------


def _client(endpoint: str | None = None) -> Any:
    session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1")
    return session.client("kinesis", endpoint_url=endpoint)


@pytest.fixture
def kinesis(kinesalite_server: Kinesalite) -> Any:
    return _client(kinesalite_server.url)


@pytest.fixture
def stream(kinesis: Any) -> str:
    name = f"changes-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=2)
    _wait_active(kinesis, name)
    return name


def _wait_active(client: Any, stream: str) -> None:
    def active() -> bool:
        summary = client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        return bool(summary["StreamStatus"] == "ACTIVE")

    wait_for(active, 15, f"stream {stream} ACTIVE")


def _change(post_id: str) -> tuple[bytes, str]:
    """A post INSERT as DynamoDB streams it into Kinesis, and its partition key (from the key)."""
    keys = {"PK": {"S": f"POST#{post_id}"}, "SK": {"S": "METADATA"}}
    created = "2024-01-15T10:30:00.123Z"
    image = {**keys, "post_id": {"S": post_id}, "author_id": {"S": "u_alice"}, "author_username": {"S": "alice"},
             "content": {"S": f"post {post_id}"}, "content_type": {"S": "text"}, "created_at": {"S": created},
             "engagement_score": {"N": "0"}, "visibility": {"S": "public"}, "is_deleted": {"BOOL": False}}
    change = {
        "awsRegion": "us-east-1", "eventID": str(uuid.uuid4()), "eventName": "INSERT", "userIdentity": None,
        "recordFormat": "application/json", "tableName": "SocialMediaApp",
        "dynamodb": {"ApproximateCreationDateTime": int(time.time() * 1000), "Keys": keys, "NewImage": image,
                     "SizeBytes": 300},
        "eventSource": "aws:dynamodb",
    }
    return json.dumps(change).encode(), _partition_key(keys)


def _partition_key(keys: dict[str, Any]) -> str:
    return hashlib.md5(json.dumps(keys, sort_keys=True).encode()).hexdigest().upper()


class Writer:
    """Puts post changes and remembers where each landed: post id -> (shard id, sequence number)."""

    def __init__(self, client: Any, stream: str) -> None:
        self.client, self.stream = client, stream
        self.landed: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def put(self, post_ids: list[str]) -> None:
        changes = [_change(p) for p in post_ids]
        entries = [{"Data": data, "PartitionKey": key} for data, key in changes]
        result = self.client.put_records(StreamName=self.stream, Records=entries)
        assert result["FailedRecordCount"] == 0, result
        with self._lock:
            for post_id, landed in zip(post_ids, result["Records"], strict=True):
                self.landed[post_id] = (landed["ShardId"], landed["SequenceNumber"])

    def put_raw(self, data: bytes, partition_key: str) -> tuple[str, str]:
        landed = self.client.put_record(StreamName=self.stream, Data=data, PartitionKey=partition_key)
        return landed["ShardId"], landed["SequenceNumber"]

    def shards_of(self) -> dict[str, list[str]]:
        by_shard: dict[str, list[str]] = {}
        for post_id, (shard_id, _) in self.landed.items():
            by_shard.setdefault(shard_id, []).append(post_id)
        return by_shard


def _consume(source: KinesisSource, checkpoints: FakeLeaseTable | None = None, per_read: int = 25):
    """One consumer run until idle: (post ids in dispatch order, its lease table, dead letters)."""
    dispatcher, letters = FakeDispatcher(), FakeDeadLetters()
    checkpoints = checkpoints if checkpoints is not None else FakeLeaseTable()
    pipeline = RecordPipeline(dispatcher, letters, {"private"})
    consumer = StreamConsumer(source, LeaseCoordinator(checkpoints, "solo"), pipeline,
                              records_per_read=per_read, idle_poll_seconds=0.01)
    consumer.run(stop_when_idle=True)
    posts = [e.post.post_id for e in dispatcher.events if isinstance(e, PostPublished)]
    assert len(posts) == len(dispatcher.events), dispatcher.events
    return posts, checkpoints, letters


def _shard(kinesis: Any, stream: str, shard_id: str) -> dict[str, Any]:
    return next(s for s in kinesis.list_shards(StreamName=stream)["Shards"] if s["ShardId"] == shard_id)


# -- resharding, end to end through the consumer ----------------------------------------------------


def test_a_split_and_a_merge_are_read_parents_first_and_poison_data_is_dead_lettered(kinesis, stream):
    writer = Writer(kinesis, stream)
    writer.put([f"a{i:03d}" for i in range(40)])
    # Poison first, then a good change with the same partition key: same shard, later position.
    bad_shard, bad_seq = writer.put_raw(b"not json {", _change("b000")[1])
    writer.put(["b000"])

    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        background = pool.submit(_write_until, writer, stop)
        try:
            _reshard(kinesis, stream, writer)
        finally:
            stop.set()
        background.result(timeout=30)  # the writer's own failure, if any, fails the test here
    by_shard = writer.shards_of()
    assert set(by_shard) == {f"shardId-00000000000{i}" for i in range(5)}, "some shard got no records"

    source = KinesisSource(kinesis, stream)
    shards = {s.shard_id: s for s in source.list_shards()}
    assert shards["shardId-000000000004"].parent_ids == ("shardId-000000000003", "shardId-000000000001")
    assert shards["shardId-000000000003"].parent_ids == ("shardId-000000000000",)
    closed = {s for s, shard in shards.items() if shard.closed}
    assert closed == {"shardId-000000000000", "shardId-000000000001", "shardId-000000000003"}

    started = time.monotonic()
    posts, checkpoints, letters = _consume(source)
    elapsed = time.monotonic() - started

    assert sorted(posts) == sorted(writer.landed), "every change dispatched exactly once"
    where = {post_id: i for i, post_id in enumerate(posts)}
    for child in shards.values():
        for parent in child.parent_ids:
            assert max(where[p] for p in by_shard[parent]) < min(where[c] for c in by_shard[child.shard_id]), (
                f"a record of {parent} was dispatched after one of its child {child.shard_id}")
    _assert_closed_parents_end_before_children(checkpoints, shards, closed)

    [(source_name, reason, letter)] = letters.letters
    assert (source_name, letter["kinesis"]["data"], letter["kinesis"]["sequenceNumber"]) == (
        f"stream:{bad_shard}", b"not json {", bad_seq)
    assert reason.startswith("Kinesis data is not base64 JSON")
    # The shard moved past the poison: the next change on it was dispatched, the shard ended.
    assert writer.landed["b000"][0] == bad_shard and int(writer.landed["b000"][1]) > int(bad_seq)
    assert "b000" in where and (bad_shard, SHARD_END) in checkpoints.history
    assert elapsed < 30, f"consuming {len(posts)} records took {elapsed:.1f}s"


def _reshard(kinesis: Any, stream: str, writer: Writer) -> None:
    """Shard 0 splits into 2 (low quarter) and 3; then 3 and shard 1 merge into 4."""
    kinesis.split_shard(StreamName=stream, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(HALF // 2))
    _wait_active(kinesis, stream)
    writer.put([f"b{i:03d}" for i in range(1, 40)])
    kinesis.merge_shards(StreamName=stream, ShardToMerge="shardId-000000000003",
                         AdjacentShardToMerge="shardId-000000000001")
    _wait_active(kinesis, stream)
    writer.put([f"c{i:03d}" for i in range(40)])


def _write_until(writer: Writer, stop: threading.Event) -> None:
    """Writes keep landing while the stream is UPDATING, as they do on AWS."""
    for batch in range(WRITER_BATCHES):
        if stop.is_set():
            return
        writer.put([f"w{batch:03d}-{i}" for i in range(5)])


def _assert_closed_parents_end_before_children(checkpoints, shards: dict[str, Shard], closed: set[str]) -> None:
    # From the history: a finished parent's lease is deleted once its children checkpoint.
    assert {s for s, c in checkpoints.history if c == SHARD_END} == closed
    order = {entry: i for i, entry in reversed(list(enumerate(checkpoints.history)))}  # first occurrence
    for child in shards.values():
        first_child = min(i for i, (shard_id, _) in enumerate(checkpoints.history) if shard_id == child.shard_id)
        for parent in child.parent_ids:
            assert order[(parent, SHARD_END)] < first_child


def test_a_restart_resumes_after_the_checkpoint(kinesis, stream):
    writer = Writer(kinesis, stream)
    writer.put([f"a{i}" for i in range(10)])
    source = KinesisSource(kinesis, stream)
    first, checkpoints, _ = _consume(source, per_read=3)

    writer.put([f"b{i}" for i in range(10)])
    again, _, _ = _consume(source, checkpoints, per_read=3)

    assert sorted(first) == [f"a{i}" for i in range(10)]
    assert sorted(again) == [f"b{i}" for i in range(10)]
    for shard_id, post_ids in writer.shards_of().items():
        assert checkpoints.saved[shard_id] == max((writer.landed[p][1] for p in post_ids), key=int)


# -- the source's own contract ------------------------------------------------------------------------


def test_records_come_back_in_the_lambda_kinesis_shape(kinesis, stream):
    writer = Writer(kinesis, stream)
    before = time.time()
    writer.put(["p1"])
    shard_id, seq = writer.landed["p1"]
    source = KinesisSource(kinesis, stream)

    result = source.read(source.iterator(shard_id, None), 10)

    [record] = result.records
    assert record["eventSource"] == "aws:kinesis"
    assert record["kinesis"]["sequenceNumber"] == seq
    assert record["kinesis"]["partitionKey"] == _change("p1")[1]
    assert isinstance(record["kinesis"]["data"], bytes)
    assert before - 5 <= record["kinesis"]["approximateArrivalTimestamp"] <= time.time() + 5
    assert abs((read_record(record).time_ms or 0) - before * 1000) < 5000
    parsed = parse_record(record)
    assert isinstance(parsed, PostPublished) and parsed.post.post_id == "p1"
    assert parsed.meta.sequence_number == seq
    assert result.next_iterator and result.millis_behind == 0
    assert source.read(source.iterator(shard_id, seq), 10).records == []
    assert source.stream_id == f"arn:aws:kinesis:us-east-1:000000000000:stream/{stream}"


def test_a_closed_shard_ends_with_no_next_iterator(kinesis, stream):
    Writer(kinesis, stream).put([f"p{i}" for i in range(6)])
    parent = "shardId-000000000001"
    kinesis.split_shard(StreamName=stream, ShardToSplit=parent, NewStartingHashKey=str(HALF + HALF // 2))
    _wait_active(kinesis, stream)
    source = KinesisSource(kinesis, stream)
    iterator: str | None = source.iterator(parent, None)
    for _ in range(20):  # at most 6 records, 2 a read, then the end
        if iterator is None:
            break
        iterator = source.read(iterator, 2).next_iterator
    assert iterator is None, "the closed parent never ended"
    assert "EndingSequenceNumber" in _shard(kinesis, stream, parent)["SequenceNumberRange"]


def test_a_missing_stream_is_a_stream_error(kinesis):
    with pytest.raises(StreamError, match="does not exist"):
        _ = KinesisSource(kinesis, "no-such-stream").stream_id


def test_kinesalite_returns_every_shard_whatever_the_page_size(kinesis, stream):
    shards = KinesisSource(kinesis, stream, shard_page_size=1).list_shards()
    assert [s.shard_id for s in shards] == ["shardId-000000000000", "shardId-000000000001"]


# -- what kinesalite cannot show: paging and AWS errors (stubbed) -------------------------------------


def _raw_shard(shard_id: str, parent: str | None = None, adjacent: str | None = None, ended: bool = False):
    seq: dict[str, str] = {"StartingSequenceNumber": "1"} | ({"EndingSequenceNumber": "9"} if ended else {})
    raw: dict[str, Any] = {"ShardId": shard_id, "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
                           "SequenceNumberRange": seq}
    parents = {"ParentShardId": parent, "AdjacentParentShardId": adjacent}
    return raw | {k: v for k, v in parents.items() if v}


def test_list_shards_follows_next_tokens_without_the_stream_name():
    client = _client()
    source = KinesisSource(client, "s", shard_page_size=2)
    with Stubber(client) as stub:
        stub.add_response("list_shards", {"Shards": [_raw_shard("a", ended=True), _raw_shard("b", ended=True)],
                                          "NextToken": "t1"}, {"StreamName": "s", "MaxResults": 2})
        stub.add_response("list_shards", {"Shards": [_raw_shard("c", "a", "b")], "NextToken": "t2"},
                          {"NextToken": "t1", "MaxResults": 2})
        stub.add_response("list_shards", {"Shards": []}, {"NextToken": "t2", "MaxResults": 2})
        shards = source.list_shards()
        stub.assert_no_pending_responses()
    assert shards == [Shard("a", (), True), Shard("b", (), True), Shard("c", ("a", "b"), False)]


@pytest.mark.parametrize(
    ("code", "error"),
    [("ExpiredIteratorException", IteratorExpiredError), ("ProvisionedThroughputExceededException", ThrottledError),
     ("LimitExceededException", ThrottledError), ("KMSThrottlingException", ThrottledError)],
)
def test_read_errors_become_stream_errors(code, error):
    client = _client()
    with Stubber(client) as stub:
        stub.add_client_error("get_records", code, http_status_code=400)
        stub.add_client_error("get_shard_iterator", code, http_status_code=400)
        source = KinesisSource(client, "s")
        with pytest.raises(error):
            source.read("AAAA", 10)
        with pytest.raises(error):
            source.iterator("shardId-000000000000", "1")


def test_an_unknown_error_is_not_swallowed():
    client = _client()
    with Stubber(client) as stub:
        stub.add_client_error("get_records", "AccessDeniedException", http_status_code=400)
        with pytest.raises(Exception, match="AccessDenied"):
            KinesisSource(client, "s").read("AAAA", 10)


def test_arrival_times_are_epoch_seconds():
    from feedpipe.adapters.kinesis import as_event_record

    arrived = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    record = as_event_record({"Data": b"{}", "SequenceNumber": "7", "PartitionKey": "k",
                              "ApproximateArrivalTimestamp": arrived})
    assert record["kinesis"]["approximateArrivalTimestamp"] == arrived.timestamp()
    assert read_record(record).time_ms == int(arrived.timestamp() * 1000)


def test_a_client_gone_mid_request_leaves_kinesalite_serving(kinesalite_server: Kinesalite, kinesis) -> None:
    """kinesalite rethrew a request's connection reset and exited: a consumer killed with
    ``kill -9`` mid-read took the server from every other consumer (the e2e failover test then
    waited out its 180 s)."""
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", kinesalite_server.port)) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            time.sleep(0.05)  # the server reading the body: then the peer resets the connection
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    kinesis.list_streams()
    assert kinesalite_server.proc is not None and kinesalite_server.proc.poll() is None, kinesalite_server.output()
