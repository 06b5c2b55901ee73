"""DynamoDB Streams as a shard source: shards (all pages), iterators, reads, errors mapped.

The consumer sees only ``ShardSource``; a Kinesis source implements the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import ClientError

from feedpipe.adapters.aws_errors import THROTTLING_CODES, error_code


@dataclass(frozen=True, slots=True)
class Shard:
    shard_id: str
    parent_ids: tuple[str, ...] = ()
    closed: bool = False  # has an ending sequence number: it will end


@dataclass(slots=True)
class ReadResult:
    records: list[dict[str, Any]]
    next_iterator: str | None  # None: the shard has ended and every record was read
    millis_behind: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class StreamError(Exception):
    """Base for the stream conditions the consumer handles itself."""


class IteratorExpiredError(StreamError):
    pass


class TrimmedDataError(StreamError):
    """The iterator points at records the stream no longer keeps (fell over 24 h behind)."""


class ThrottledError(StreamError):
    pass


class ShardGoneError(StreamError):
    """The shard is no longer in the stream (it aged out of retention unread)."""


class ShardSource(Protocol):
    @property
    def stream_id(self) -> str: ...

    def list_shards(self) -> list[Shard]: ...

    def iterator(self, shard_id: str, after: str | None) -> str: ...

    def read(self, iterator: str, limit: int) -> ReadResult: ...


def map_stream_error(exc: ClientError) -> Exception:
    code = error_code(exc)
    if code == "ExpiredIteratorException":
        return IteratorExpiredError(str(exc))
    if code == "TrimmedDataAccessException":
        return TrimmedDataError(str(exc))
    if code in THROTTLING_CODES:
        return ThrottledError(str(exc))
    if code == "ResourceNotFoundException":
        return ShardGoneError(str(exc))
    unmapped: Exception = exc
    return unmapped


class DynamoDBStreamSource:
    """The table's latest stream, read through the ``dynamodbstreams`` API."""

    def __init__(self, streams_client: Any, dynamodb_client: Any, table_name: str) -> None:
        self.client = streams_client
        self.dynamodb = dynamodb_client
        self.table_name = table_name
        self._arn: str | None = None

    @property
    def stream_id(self) -> str:
        if self._arn is None:
            table = self.dynamodb.describe_table(TableName=self.table_name)["Table"]
            arn = table.get("LatestStreamArn")
            if not arn or not table.get("StreamSpecification", {}).get("StreamEnabled"):
                raise StreamError(f"table {self.table_name} has no stream enabled")
            self._arn = arn
        return self._arn

    def list_shards(self) -> list[Shard]:
        shards: list[Shard] = []
        request: dict[str, Any] = {"StreamArn": self.stream_id}
        while True:
            description = self.client.describe_stream(**request)["StreamDescription"]
            for raw in description.get("Shards", []):
                parent = raw.get("ParentShardId")
                ending = raw.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
                shards.append(Shard(raw["ShardId"], (parent,) if parent else (), bool(ending)))
            last = description.get("LastEvaluatedShardId")
            if not last:
                return shards
            request["ExclusiveStartShardId"] = last

    def iterator(self, shard_id: str, after: str | None) -> str:
        request: dict[str, Any] = {"StreamArn": self.stream_id, "ShardId": shard_id}
        if after:
            request.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=after)
        else:
            request["ShardIteratorType"] = "TRIM_HORIZON"
        try:
            return str(self.client.get_shard_iterator(**request)["ShardIterator"])
        except ClientError as exc:
            raise map_stream_error(exc) from exc

    def read(self, iterator: str, limit: int) -> ReadResult:
        try:
            response = self.client.get_records(ShardIterator=iterator, Limit=limit)
        except ClientError as exc:
            raise map_stream_error(exc) from exc
        return ReadResult(response.get("Records", []), response.get("NextShardIterator"))
