"""Small fakes that behave as AWS does where moto does not: many shards with parents that
close, iterators that expire, throttling, and a broker that goes away."""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from botocore.exceptions import ClientError
from kombu.exceptions import OperationalError

from feedpipe.adapters.leases import Lease, LeaseLostError
from feedpipe.adapters.streams import (
    IteratorExpiredError,
    ReadResult,
    Shard,
    ShardGoneError,
    ThrottledError,
    TrimmedDataError,
)
from feedpipe.core.events import Event


def follow_record(seq: int, follower: str, followed: str, name: str = "INSERT") -> dict[str, Any]:
    return {
        "eventID": f"e{seq}",
        "eventName": name,
        "dynamodb": {
            "Keys": {"PK": {"S": f"USER#{follower}"}, "SK": {"S": f"FOLLOWING#{followed}"}},
            "SequenceNumber": f"{seq:021d}",
        },
    }


@dataclass
class FakeShardSource:
    """Shards of records; a closed shard ends (null next iterator) after its last record."""

    shards: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    parents: dict[str, tuple[str, ...]] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    expire_reads: int = 0  # the next N reads fail with an expired iterator
    throttle_reads: int = 0
    trim_below: dict[str, int] = field(default_factory=dict)  # shard -> first index still kept
    gone: set[str] = field(default_factory=set)  # shards aged out of the stream
    unavailable_calls: int = 0  # the next N calls answer HTTP 500, after botocore's retries
    reads: int = 0
    stream_id: str = "arn:fake:stream"
    # The consumer reads its shards on a pool of threads: the counters above are taken under it.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_shard(
        self, shard_id: str, records: Sequence[dict[str, Any]], parents: tuple[str, ...] = (), closed: bool = False
    ) -> None:
        self.shards[shard_id] = list(records)
        self.parents[shard_id] = parents
        if closed:
            self.closed.add(shard_id)

    def list_shards(self) -> list[Shard]:
        self._maybe_unavailable("DescribeStream")
        return [Shard(s, self.parents.get(s, ()), s in self.closed) for s in self.shards]

    def _maybe_unavailable(self, operation: str) -> None:
        if self._take("unavailable_calls"):
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, operation)

    def iterator(self, shard_id: str, after: str | None) -> str:
        self._maybe_unavailable("GetShardIterator")
        if shard_id in self.gone:
            raise ShardGoneError(f"shard {shard_id} not found")
        records = self.shards[shard_id]
        position = self.trim_below.get(shard_id, 0)  # TRIM_HORIZON: the oldest record kept
        if after:
            position = next(i + 1 for i, r in enumerate(records) if r["dynamodb"]["SequenceNumber"] == after)
        return f"{shard_id}|{position}"

    def _take(self, counter: str) -> bool:
        """Use up one of the ``counter`` failures still to inject, if any are left."""
        with self.lock:
            left = getattr(self, counter)
            if left:
                setattr(self, counter, left - 1)
            return bool(left)

    def read(self, iterator: str, limit: int) -> ReadResult:
        with self.lock:
            self.reads += 1
        self._maybe_unavailable("GetRecords")
        if self._take("expire_reads"):
            raise IteratorExpiredError("Iterator expired")
        if self._take("throttle_reads"):
            raise ThrottledError("Rate exceeded")
        shard_id, _, raw = iterator.partition("|")
        position = int(raw)
        if position < self.trim_below.get(shard_id, 0):
            raise TrimmedDataError("records trimmed")
        records = self.shards[shard_id][position : position + limit]
        end = position + len(records)
        if shard_id in self.closed and end >= len(self.shards[shard_id]):
            return ReadResult(records, None)
        return ReadResult(records, f"{shard_id}|{end}")


def _locked(method: Any) -> Any:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return call


@dataclass
class FakeLeaseTable:
    """The lease table's conditional writes, in memory (the real one runs on moto in
    tests/adapters/test_leases.py against the same scenarios)."""

    leases: dict[str, Lease] = field(default_factory=dict)
    history: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # consumers may share it across threads

    @classmethod
    def with_checkpoints(cls, checkpoints: dict[str, str]) -> FakeLeaseTable:
        return cls({s: Lease(s, checkpoint=c) for s, c in checkpoints.items()})

    @property
    def saved(self) -> dict[str, str]:
        return {s: lease.checkpoint for s, lease in self.leases.items() if lease.checkpoint}

    @_locked
    def list(self) -> dict[str, Lease]:
        return dict(self.leases)

    @_locked
    def create(self, shard_id: str, parent_ids: tuple[str, ...], checkpoint: str | None = None) -> bool:
        if shard_id in self.leases:
            return False
        self.leases[shard_id] = Lease(shard_id, parent_ids=tuple(sorted(parent_ids)), checkpoint=checkpoint)
        return True

    @_locked
    def take(self, lease: Lease, owner: str) -> Lease | None:
        # A lease another consumer deleted (its shard finished, every child checkpointed) fails
        # every conditional write, as the table's do: the item is not there to match.
        current = self.leases.get(lease.shard_id)
        if current is None or current.counter != lease.counter:
            return None
        self.leases[lease.shard_id] = replace(current, owner=owner, counter=current.counter + 1)
        return self.leases[lease.shard_id]

    @_locked
    def renew(self, lease: Lease, owner: str) -> Lease | None:
        current = self.leases.get(lease.shard_id)
        if current is None or current.owner != owner or current.counter != lease.counter:
            return None
        self.leases[lease.shard_id] = replace(current, counter=current.counter + 1)
        return self.leases[lease.shard_id]

    @_locked
    def checkpoint(self, lease: Lease, owner: str, checkpoint: str, last_record_ms: int | None) -> Lease:
        current = self.leases.get(lease.shard_id)
        if current is None or current.owner != owner:
            raise LeaseLostError(lease.shard_id)
        self.leases[lease.shard_id] = replace(current, checkpoint=checkpoint, last_record_ms=last_record_ms)
        self.history.append((lease.shard_id, checkpoint))
        return replace(lease, checkpoint=checkpoint, last_record_ms=last_record_ms)

    @_locked
    def release(self, lease: Lease, owner: str) -> bool:
        current = self.leases.get(lease.shard_id)
        if current is None or current.owner != owner:
            return False
        self.leases[lease.shard_id] = replace(current, owner=None, counter=current.counter + 1)
        return True

    @_locked
    def delete_finished(self, shard_id: str) -> bool:
        if self.leases.get(shard_id, Lease(shard_id)).finished:
            del self.leases[shard_id]
            return True
        return False


@dataclass
class FakeDispatcher:
    events: list[Event] = field(default_factory=list)
    fail_next: int = 0
    sent: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)  # (task name, payloads)

    def dispatch(self, events: Sequence[Event]) -> int:
        if self.fail_next:
            self.fail_next -= 1
            raise OperationalError("broker unreachable")
        self.events.extend(events)
        return 1

    def send(self, task_name: str, payloads: list[dict[str, Any]]) -> None:
        self.sent.append((task_name, payloads))


@dataclass
class FakeDeadLetters:
    letters: list[tuple[str, str, Any]] = field(default_factory=list)

    def add_many(self, letters: Sequence[tuple[str, str, Any]]) -> None:
        self.letters.extend(letters)


def nested_change(depth: int, seq: int = 1) -> bytes:
    """A post INSERT as DynamoDB streams it into Kinesis, with an attribute ``depth`` maps deep."""
    value = '{"S": "bottom"}'
    for _ in range(depth):
        value = '{"M": {"a": ' + value + "}}"
    image = ('{"PK": {"S": "POST#p1"}, "SK": {"S": "METADATA"}, "post_id": {"S": "p1"}, "author_id": {"S": "a"}, '
             '"created_at": {"S": "2026-01-01T00:00:00.000Z"}, "content": {"S": "hi"}, "extra": ' + value + "}")
    return ('{"eventName": "INSERT", "dynamodb": {"Keys": {"PK": {"S": "POST#p1"}, "SK": {"S": "METADATA"}}, '
            f'"SequenceNumber": "{seq}", "NewImage": {image}}}}}').encode()


def brackets(depth: int) -> bytes:
    """JSON nested ``depth`` lists deep: deeper than ``json.loads`` can recurse for big depths."""
    return b"[" * depth + b"]" * depth


def kinesis_record(seq: int, data: bytes, as_text: bool = False) -> dict[str, Any]:
    """A Kinesis record as GetRecords gives it (data bytes) or as a Lambda event does (base64)."""
    return {"eventSource": "aws:kinesis", "eventSourceARN": "arn:aws:kinesis:us-east-1:1:stream/s",
            "kinesis": {"data": base64.b64encode(data).decode() if as_text else data,
                        "sequenceNumber": f"{seq:021d}"}}
