"""DynamoDB Streams as a shard source: shards (all pages), iterators, reads, errors mapped.

The consumer sees only ``ShardSource``; a Kinesis source implements the same protocol.
"""

from __future__ import annotations

import json
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
    """The table's latest stream, read through the ``dynamodbstreams`` API (a client from
    ``keep_records_raw`` reads records faster; botocore's parsed ones read the same)."""

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


RAW_RECORDS_EVENT = "before-parse.dynamodb-streams.GetRecords"


def keep_records_raw(streams_client: Any) -> Any:
    """GetRecords gives its records as DynamoDB sends them, in the JSON wire format a Lambda
    event carries too (``ApproximateCreationDateTime`` in epoch seconds, binary values in
    base64), which ``read_record`` reads already. botocore's parser would walk every attribute
    of every image against the shape model: about 180 µs a record, ten times what parsing and
    publishing it costs feedpipe, on the reader threads that share the consumer's one core.
    The rest of the response, and every error, is still botocore's to parse."""
    streams_client.meta.events.register_first(RAW_RECORDS_EVENT, _take_records, unique_id="feedpipe-raw-records")
    return streams_client


def _take_records(
    operation_model: Any, response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
) -> None:
    """Only a successful JSON answer: under any other protocol botocore keeps the whole body."""
    if response_dict.get("status_code", 500) >= 300 or not response_dict.get("body"):
        return
    if operation_model.service_model.resolved_protocol != "json":
        return
    body = json.loads(response_dict["body"])
    customized_response_dict["Records"] = body.pop("Records", [])
    response_dict["body"] = json.dumps(body).encode()
