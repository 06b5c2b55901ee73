"""The shard consumer on a faithful fake source: lineage, checkpoints, expiry, throttling,
bad records and a broker outage."""

from __future__ import annotations

import json
import threading

import pytest
from botocore.exceptions import ClientError

from feedpipe.adapters.leases import SHARD_END
from feedpipe.adapters.streams import DynamoDBStreamSource
from feedpipe.consumers.consumer import StreamConsumer
from feedpipe.consumers.leasing import LeaseCoordinator
from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.core.records import read_record
from tests.fakes import (
    FakeDeadLetters,
    FakeDispatcher,
    FakeLeaseTable,
    FakeShardSource,
    brackets,
    follow_record,
    kinesis_record,
    nested_change,
)


def _consumer(source, checkpoints=None, dispatcher=None, letters=None, per_read=2):
    pipeline = RecordPipeline(dispatcher or FakeDispatcher(), letters or FakeDeadLetters(), {"private"})
    leases = LeaseCoordinator(checkpoints if checkpoints is not None else FakeLeaseTable(), "solo")
    return StreamConsumer(source, leases, pipeline, records_per_read=per_read, idle_poll_seconds=0.001)


def _followed(dispatcher: FakeDispatcher) -> list[str]:
    return [e.followed_id for e in dispatcher.events]


def test_children_wait_for_their_parents_to_end():
    source = FakeShardSource()
    # The child is listed first: order of listing must not matter.
    source.add_shard("child", [follow_record(10, "a", "c1"), follow_record(11, "a", "c2")], parents=("parent",))
    source.add_shard("parent", [follow_record(i, "a", f"p{i}") for i in range(1, 6)], closed=True)
    dispatcher, checkpoints = FakeDispatcher(), FakeLeaseTable()

    _consumer(source, checkpoints, dispatcher).run(stop_when_idle=True)

    assert _followed(dispatcher) == ["p1", "p2", "p3", "p4", "p5", "c1", "c2"]
    assert checkpoints.saved == {"parent": SHARD_END, "child": f"{11:021d}"}


def test_a_restart_resumes_after_the_checkpoint():
    source = FakeShardSource()
    source.add_shard("s", [follow_record(i, "a", f"u{i}") for i in range(1, 4)])
    checkpoints = FakeLeaseTable()
    _consumer(source, checkpoints).run(stop_when_idle=True)

    source.shards["s"] += [follow_record(4, "a", "u4"), follow_record(5, "a", "u5")]
    dispatcher = FakeDispatcher()
    _consumer(source, checkpoints, dispatcher).run(stop_when_idle=True)

    assert _followed(dispatcher) == ["u4", "u5"]


def test_expired_iterators_and_throttling_lose_and_repeat_nothing():
    source = FakeShardSource(expire_reads=2, throttle_reads=3)
    source.add_shard("s", [follow_record(i, "a", f"u{i}") for i in range(1, 8)])
    dispatcher = FakeDispatcher()

    _consumer(source, dispatcher=dispatcher).run(stop_when_idle=True)

    assert _followed(dispatcher) == [f"u{i}" for i in range(1, 8)]


def test_aws_unavailable_for_a_while_is_waited_out_and_nothing_is_lost_or_repeated():
    source = FakeShardSource()
    source.add_shard("s", [follow_record(i, "a", f"u{i}") for i in range(1, 8)])
    dispatcher, checkpoints = FakeDispatcher(), FakeLeaseTable()
    consumer = _consumer(source, checkpoints, dispatcher)
    consumer.aws_backoff_seconds = 0.001

    real_read = source.read

    def read_then_go_down(iterator: str, limit: int):
        result = real_read(iterator, limit)
        if source.reads == 2:
            source.unavailable_calls = 6  # DescribeStream, GetShardIterator, GetRecords all fail
        return result

    source.read = read_then_go_down  # type: ignore[method-assign]
    consumer.run(stop_when_idle=True)

    assert source.unavailable_calls == 0  # the outage was met and outlived
    assert _followed(dispatcher) == [f"u{i}" for i in range(1, 8)]
    assert checkpoints.saved["s"] == f"{7:021d}"


def test_checkpoints_failing_in_a_row_back_off_longer_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease table refusing checkpoints (unavailable): each attempt reads and publishes the
    batch again, so each must wait longer than the last, not start the backoff over because the
    read before it succeeded."""
    import feedpipe.consumers.consumer as consumer_module

    source = FakeShardSource()
    source.add_shard("s", [follow_record(i, "a", f"u{i}") for i in range(1, 4)])
    checkpoints = FakeLeaseTable()
    real_checkpoint, refusals = checkpoints.checkpoint, [4]

    def unavailable_then_real(*args, **kwargs):
        if refusals[0]:
            refusals[0] -= 1
            raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "down"},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutItem")
        return real_checkpoint(*args, **kwargs)

    checkpoints.checkpoint = unavailable_then_real  # type: ignore[method-assign]
    steps: list[int] = []
    real_backoff = consumer_module._backoff
    monkeypatch.setattr(consumer_module, "_backoff", lambda base, failures, *cap: (
        steps.append(failures), real_backoff(base, failures, *cap))[1])
    dispatcher = FakeDispatcher()
    consumer = _consumer(source, checkpoints, dispatcher)
    consumer.aws_backoff_seconds = 0.001

    consumer.run(stop_when_idle=True)

    assert steps == [1, 2, 3, 4]
    assert checkpoints.saved["s"] == f"{3:021d}" and set(_followed(dispatcher)) == {"u1", "u2", "u3"}


def test_one_shard_unavailable_does_not_hold_the_others_back():
    source = FakeShardSource()
    source.add_shard("bad", [follow_record(1, "a", "b1")])
    source.add_shard("good", [follow_record(i, "a", f"g{i}") for i in range(2, 6)])
    dispatcher = FakeDispatcher()
    consumer = _consumer(source, dispatcher=dispatcher)
    real_read, failed = source.read, [0]

    def bad_shard_down(iterator: str, limit: int):
        if iterator.startswith("bad|") and failed[0] < 6:
            failed[0] += 1
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "GetRecords")
        return real_read(iterator, limit)

    source.read = bad_shard_down  # type: ignore[method-assign]
    consumer.aws_backoff_seconds = 0.05
    consumer.run(stop_when_idle=True)

    followed = _followed(dispatcher)
    assert sorted(followed) == ["b1", "g2", "g3", "g4", "g5"] and failed[0] == 6
    assert followed.index("g5") < followed.index("b1")  # the good shard went on while the bad one waited


def test_a_lease_left_recorded_as_ours_is_taken_back_at_once():
    """A renew that succeeded in the table but whose answer was lost: the next renew fails its
    condition and the shard is dropped, yet the table still names this consumer. Nobody else
    takes such a lease while we keep it from expiring, so we must."""
    source = FakeShardSource()
    source.add_shard("s", [follow_record(i, "a", f"u{i}") for i in range(1, 4)])
    checkpoints = FakeLeaseTable()
    coordinator = LeaseCoordinator(checkpoints, "solo", failover_seconds=3600)
    coordinator.sync(source.list_shards())
    coordinator.tick()
    lease = coordinator.held["s"]
    checkpoints.renew(lease, "solo")  # it happened, but the consumer never heard
    coordinator._next_renew = float("-inf")
    assert coordinator.tick() == {"s"} and "s" not in coordinator.held

    coordinator._next_take = float("-inf")
    coordinator.tick()

    assert "s" in coordinator.held  # not after failover_seconds (an hour here): now


def test_an_error_retrying_cannot_fix_stops_the_consumer():
    source = FakeShardSource()
    source.add_shard("s", [follow_record(1, "a", "u1")])
    denied = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"},
                          "ResponseMetadata": {"HTTPStatusCode": 400}}, "GetRecords")

    def deny(iterator: str, limit: int):
        raise denied

    source.read = deny  # type: ignore[method-assign]
    with pytest.raises(ClientError):
        _consumer(source).run(stop_when_idle=True)


def test_a_bad_record_is_dead_lettered_and_the_shard_moves_on():
    bad = {"eventName": "INSERT", "dynamodb": {"Keys": {"PK": {"S": "POST#x"}}, "SequenceNumber": f"{2:021d}"}}
    source = FakeShardSource()
    source.add_shard("s", [follow_record(1, "a", "u1"), bad, follow_record(3, "a", "u3")])
    dispatcher, letters, checkpoints = FakeDispatcher(), FakeDeadLetters(), FakeLeaseTable()

    _consumer(source, checkpoints, dispatcher, letters, per_read=10).run(stop_when_idle=True)

    assert _followed(dispatcher) == ["u1", "u3"]
    assert [(reason, record) for _, reason, record in letters.letters] == [("Keys lack a string PK and SK", bad)]
    assert checkpoints.saved["s"] == f"{3:021d}"


def test_a_broker_outage_holds_the_checkpoint_until_the_batch_is_published():
    source = FakeShardSource()
    source.add_shard("s", [follow_record(i, "a", f"u{i}") for i in range(1, 5)])
    dispatcher, checkpoints = FakeDispatcher(fail_next=3), FakeLeaseTable()

    _consumer(source, checkpoints, dispatcher).run(stop_when_idle=True)

    assert _followed(dispatcher) == ["u1", "u2", "u3", "u4"]  # each once, in order
    # No checkpoint was ever written for records that were not yet published.
    assert checkpoints.history == [("s", f"{2:021d}"), ("s", f"{4:021d}")]


def test_stop_during_an_outage_exits_without_checkpointing_the_batch():
    source = FakeShardSource()
    source.add_shard("s", [follow_record(1, "a", "u1")])
    dispatcher, checkpoints = FakeDispatcher(fail_next=10**6), FakeLeaseTable()
    consumer = _consumer(source, checkpoints, dispatcher)
    stopper = threading.Timer(0.3, consumer.request_stop)
    stopper.start()

    consumer.run()

    assert checkpoints.saved == {} and dispatcher.events == []


def test_trimmed_data_is_a_loud_gap_then_consumption_resumes_at_the_oldest_record():
    source = FakeShardSource(trim_below={"s": 2})
    source.add_shard("s", [follow_record(i, "a", f"u{i}") for i in range(1, 6)])
    checkpoints = FakeLeaseTable.with_checkpoints({"s": f"{1:021d}"})  # the consumer stopped after u1
    letters, dispatcher = FakeDeadLetters(), FakeDispatcher()

    _consumer(source, checkpoints, dispatcher, letters).run(stop_when_idle=True)

    assert _followed(dispatcher) == ["u3", "u4", "u5"]
    assert len(letters.letters) == 1 and letters.letters[0][1].startswith("gap: trimmed data after")


class _PagedStreams:
    """describe_stream answering in pages, as AWS does for streams with many shards."""

    def __init__(self) -> None:
        self.pages = {
            None: {"Shards": [{"ShardId": "s1", "SequenceNumberRange": {"EndingSequenceNumber": "9"}}],
                   "LastEvaluatedShardId": "s1"},
            "s1": {"Shards": [{"ShardId": "s2", "ParentShardId": "s1", "SequenceNumberRange": {}}]},
        }

    def describe_stream(self, StreamArn: str, ExclusiveStartShardId: str | None = None) -> dict:
        return {"StreamDescription": self.pages[ExclusiveStartShardId]}


class _Table:
    def describe_table(self, TableName: str) -> dict:
        return {"Table": {"LatestStreamArn": "arn:s", "StreamSpecification": {"StreamEnabled": True}}}


def test_every_shard_is_listed_across_describe_stream_pages():
    shards = DynamoDBStreamSource(_PagedStreams(), _Table(), "T").list_shards()

    assert [(s.shard_id, s.parent_ids, s.closed) for s in shards] == [("s1", (), True), ("s2", ("s1",), False)]


@pytest.mark.parametrize("per_read", [1, 3, 1000])
def test_every_record_is_dispatched_once_whatever_the_read_size(per_read):
    source = FakeShardSource()
    source.add_shard("s", [follow_record(i, "a", f"u{i}") for i in range(1, 11)], closed=True)
    dispatcher = FakeDispatcher()

    _consumer(source, dispatcher=dispatcher, per_read=per_read).run(stop_when_idle=True)

    assert _followed(dispatcher) == [f"u{i}" for i in range(1, 11)]


def test_a_broker_outage_dead_letters_a_bad_record_once_however_often_it_retries():
    bad = {"eventName": "INSERT", "dynamodb": {"Keys": {"PK": {"S": "POST#x"}}, "SequenceNumber": f"{2:021d}"}}
    source = FakeShardSource()
    source.add_shard("s", [follow_record(1, "a", "u1"), bad])
    dispatcher, letters = FakeDispatcher(fail_next=4), FakeDeadLetters()

    _consumer(source, dispatcher=dispatcher, letters=letters, per_read=10).run(stop_when_idle=True)

    assert len(letters.letters) == 1 and _followed(dispatcher) == ["u1"]


def test_a_post_whose_visibility_is_not_a_string_does_not_stop_the_shard():
    post = {"eventName": "INSERT", "dynamodb": {
        "Keys": {"PK": {"S": "POST#p1"}, "SK": {"S": "METADATA"}}, "SequenceNumber": f"{1:021d}",
        "NewImage": {"PK": {"S": "POST#p1"}, "SK": {"S": "METADATA"}, "post_id": {"S": "p1"},
                     "author_id": {"S": "a"}, "created_at": {"S": "2026-01-01T00:00:00Z"},
                     "visibility": {"L": [{"S": "private"}]}}}}
    source = FakeShardSource()
    source.add_shard("s", [post, follow_record(2, "a", "u2")])
    dispatcher = FakeDispatcher()

    _consumer(source, dispatcher=dispatcher, per_read=10).run(stop_when_idle=True)

    assert [e.kind for e in dispatcher.events] == ["post_published", "follow_started"]


def test_a_parser_bug_dead_letters_the_record_and_the_shard_moves_on(monkeypatch, caplog):
    import feedpipe.core.records as records_module

    real = records_module.parse_change

    def flaky(record, excluded):
        if record["dynamodb"]["SequenceNumber"] == f"{1:021d}":
            raise TypeError("a bug")
        return real(record, excluded)

    monkeypatch.setattr(records_module, "parse_change", flaky)
    source = FakeShardSource()
    source.add_shard("s", [follow_record(1, "a", "u1"), follow_record(2, "a", "u2")])
    dispatcher, letters = FakeDispatcher(), FakeDeadLetters()

    _consumer(source, dispatcher=dispatcher, letters=letters, per_read=10).run(stop_when_idle=True)

    assert _followed(dispatcher) == ["u2"] and letters.letters[0][1] == "unexpected TypeError: a bug"
    [logged] = [r for r in caplog.records if r.getMessage().startswith("unexpected error parsing")]
    assert logged.exc_info is not None and logged.exc_info[0] is TypeError  # the bug's traceback, for its fix


def test_a_parent_gone_from_the_stream_is_a_loud_gap_and_its_children_go_on():
    source = FakeShardSource(gone={"old"})
    source.add_shard("old", [follow_record(1, "a", "lost")], closed=True)
    source.add_shard("new", [follow_record(2, "a", "kept")], parents=("old",))
    dispatcher, letters = FakeDispatcher(), FakeDeadLetters()

    _consumer(source, dispatcher=dispatcher, letters=letters).run(stop_when_idle=True)

    assert _followed(dispatcher) == ["kept"]
    assert [reason.split(":")[0] for _, reason, _ in letters.letters] == ["gap"]


@pytest.mark.parametrize(("data", "reason"), [
    (brackets(200_000), "Kinesis data nests too deep to parse"),
    (brackets(500), "Kinesis data is not a DynamoDB change record"),
    (nested_change(400), "bad NewImage: attributes nest deeper than 50 levels"),
], ids=["beyond-json-recursion", "deep-lists", "deep-maps"])
def test_deeply_nested_kinesis_data_is_dead_lettered_and_the_shard_moves_on(data, reason):
    """Nesting ``json.loads`` cannot recurse through, or that a parser walking it could not:
    either used to escape the record's error handling and crash the consumer before its
    checkpoint, over and over."""
    source = FakeShardSource()
    source.add_shard("s", [follow_record(1, "a", "u1"), kinesis_record(2, data), follow_record(3, "a", "u3")])
    dispatcher, letters, checkpoints = FakeDispatcher(), FakeDeadLetters(), FakeLeaseTable()

    _consumer(source, checkpoints, dispatcher, letters, per_read=10).run(stop_when_idle=True)

    assert _followed(dispatcher) == ["u1", "u3"]
    assert [(r, record["kinesis"]["data"]) for _, r, record in letters.letters] == [(reason, data)]
    assert checkpoints.saved["s"] == f"{3:021d}"


def test_nesting_as_deep_as_dynamodb_allows_is_read():
    source = FakeShardSource()
    source.add_shard("s", [kinesis_record(1, nested_change(32))])
    dispatcher, letters = FakeDispatcher(), FakeDeadLetters()

    _consumer(source, dispatcher=dispatcher, letters=letters, per_read=10).run(stop_when_idle=True)

    assert [e.kind for e in dispatcher.events] == ["post_published"] and letters.letters == []


def test_a_record_too_deep_to_serialize_is_dead_lettered_with_what_can_be_kept():
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    bad = {"eventName": "INSERT", "eventID": deep, "dynamodb": {"Keys": deep, "SequenceNumber": f"{2:021d}"}}
    source = FakeShardSource()
    source.add_shard("s", [bad, follow_record(3, "a", "u3")])
    dispatcher, letters, checkpoints = FakeDispatcher(), FakeDeadLetters(), FakeLeaseTable()

    _consumer(source, checkpoints, dispatcher, letters, per_read=10).run(stop_when_idle=True)

    [(_, reason, record)] = letters.letters
    assert reason == "bad Keys: an item image must be a map"
    json.dumps(record)  # the store can write it: what lies deeper than 100 levels is cut
    assert record["dynamodb"]["SequenceNumber"] == f"{2:021d}"
    assert _followed(dispatcher) == ["u3"] and checkpoints.saved["s"] == f"{3:021d}"


@pytest.mark.parametrize("created", [float("inf"), float("nan"), "soon", [1], None])
def test_a_last_record_with_no_usable_time_or_shape_still_checkpoints(created):
    """The consumer reads the batch's last record's time after dead-lettering it: a record
    whose ``dynamodb`` is not an object, or whose time is not finite, must not stop the shard."""
    bad = [{"eventName": "INSERT", "dynamodb": "not an object"},
           {"eventName": "INSERT", "dynamodb": {"SequenceNumber": f"{2:021d}", "ApproximateCreationDateTime": created}}]
    for record in bad:
        assert read_record(record).time_ms is None
    source = FakeShardSource()
    source.add_shard("s", [follow_record(1, "a", "u1"), bad[1]])
    letters, checkpoints = FakeDeadLetters(), FakeLeaseTable()

    _consumer(source, checkpoints, letters=letters, per_read=10).run(stop_when_idle=True)

    assert len(letters.letters) == 1 and checkpoints.saved["s"] == f"{2:021d}"


def test_a_kinesis_batch_is_decoded_once_per_record_from_read_to_checkpoint(monkeypatch, load_event):
    """Regression: the pipeline, the checkpoint and the lag each read the raw record again."""
    import base64

    from feedpipe.core import records

    data = json.dumps(load_event("post_insert")).encode()
    source = FakeShardSource()
    source.add_shard("s", [kinesis_record(n, data, as_text=True) for n in range(1, 4)])
    decoded: list[str] = []
    real = base64.b64decode
    monkeypatch.setattr(records.base64, "b64decode", lambda text, **kw: decoded.append(text) or real(text, **kw))
    checkpoints, dispatcher = FakeLeaseTable(), FakeDispatcher()
    _consumer(source, checkpoints, dispatcher, per_read=3).run(stop_when_idle=True)

    assert len(dispatcher.events) == 3 and len(decoded) == 3
    assert checkpoints.saved["s"] == f"{3:021d}"
