"""Kinesis as a shard source: the stream DynamoDB streams the table's changes into.

Records come back in the shape a Lambda Kinesis event has (``{"kinesis": {"data", ...}}``),
which ``parse_record`` and ``record_sequence`` already read, so the rest of feedpipe is unchanged.
A merged shard has two parents (``ParentShardId`` and ``AdjacentParentShardId``); the consumer
reads a child only once every parent has ended.

Kinesis has no "trimmed position" error: an iterator after a sequence number that aged out of
retention starts at the oldest record kept, so ``TrimmedDataError`` never comes from here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from feedpipe.adapters.streams import ReadResult, Shard, StreamError, map_stream_error


class KinesisSource:
    """One Kinesis stream, by name, read through the ``kinesis`` API."""

    def __init__(self, client: Any, stream_name: str, shard_page_size: int | None = None) -> None:
        self.client = client
        self.stream_name = stream_name
        self.shard_page_size = shard_page_size  # ListShards MaxResults; None: the service default
        self._arn: str | None = None

    @property
    def stream_id(self) -> str:
        if self._arn is None:
            try:
                summary = self.client.describe_stream_summary(StreamName=self.stream_name)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                    raise StreamError(f"Kinesis stream {self.stream_name} does not exist") from exc
                raise
            self._arn = str(summary["StreamDescriptionSummary"]["StreamARN"])
        return self._arn

    def list_shards(self) -> list[Shard]:
        """Every shard the stream keeps, open and closed, across all ListShards pages."""
        shards: list[Shard] = []
        paging: dict[str, Any] = {"MaxResults": self.shard_page_size} if self.shard_page_size else {}
        # ListShards takes the stream name on the first call only; later pages carry a token.
        request: dict[str, Any] = {"StreamName": self.stream_name, **paging}
        while True:
            response = self.client.list_shards(**request)
            shards.extend(_shard(raw) for raw in response.get("Shards", []))
            token = response.get("NextToken")
            if not token:
                return shards
            request = {"NextToken": token, **paging}

    def iterator(self, shard_id: str, after: str | None) -> str:
        request: dict[str, Any] = {"StreamName": self.stream_name, "ShardId": shard_id}
        if after:
            request.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
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
        return ReadResult(
            [as_event_record(raw) for raw in response.get("Records", [])],
            response.get("NextShardIterator"),  # absent: a closed shard read to its end
            response.get("MillisBehindLatest"),
        )


def _shard(raw: dict[str, Any]) -> Shard:
    parents = tuple(p for p in (raw.get("ParentShardId"), raw.get("AdjacentParentShardId")) if p)
    ending = raw.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
    return Shard(raw["ShardId"], parents, bool(ending))


def as_event_record(raw: dict[str, Any]) -> dict[str, Any]:
    """A GetRecords record in the Lambda Kinesis event shape (data stays bytes)."""
    return {
        "kinesis": {
            "data": raw["Data"],
            "sequenceNumber": raw["SequenceNumber"],
            "partitionKey": raw.get("PartitionKey", ""),
            "approximateArrivalTimestamp": _epoch_seconds(raw.get("ApproximateArrivalTimestamp")),
        },
        "eventSource": "aws:kinesis",
    }


def _epoch_seconds(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
