"""Shard checkpoints in feedpipe's lease table (DynamoDB).

One item per shard, ``lease_key = {stream_id}|{shard_id}``: ``checkpoint`` is the last
sequence number whose work is durably enqueued, or ``SHARD_END`` once a closed shard is done.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from feedpipe.core import keys
from feedpipe.core.attributes import from_image

SHARD_END = "SHARD_END"


class CheckpointStore:
    def __init__(self, client: Any, table_name: str) -> None:
        self.client = client
        self.table = table_name

    def load(self, stream_id: str) -> dict[str, str]:
        """Every shard checkpoint stored for this stream, by shard id."""
        return {shard: item["checkpoint"] for shard, item in self.describe(stream_id).items()}

    def describe(self, stream_id: str) -> dict[str, dict[str, Any]]:
        """Every stored shard item of this stream, as plain values, by shard id."""
        prefix = keys.lease_key(stream_id, "")
        request: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(lease_key, :p)",
            "ExpressionAttributeValues": {":p": {"S": prefix}},
            "ConsistentRead": True,
        }
        found: dict[str, dict[str, Any]] = {}
        while True:
            response = self.client.scan(**request)
            for item in response.get("Items", []):
                if "checkpoint" in item:
                    found[item["lease_key"]["S"][len(prefix) :]] = from_image(item)
            if not response.get("LastEvaluatedKey"):
                return found
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def save(
        self,
        stream_id: str,
        shard_id: str,
        checkpoint: str,
        parents: tuple[str, ...] = (),
        last_record_ms: int | None = None,
    ) -> None:
        values: dict[str, Any] = {
            ":c": {"S": checkpoint},
            ":t": {"S": datetime.now(UTC).isoformat(timespec="milliseconds")},
            ":s": {"S": shard_id},
        }
        expression = "SET checkpoint = :c, updated_at = :t, shard_id = :s"
        if last_record_ms is not None:
            values[":r"] = {"N": str(last_record_ms)}
            expression += ", last_record_ms = :r"
        if parents:
            values[":p"] = {"SS": list(parents)}
            expression += ", parent_shard_ids = :p"
        self.client.update_item(
            TableName=self.table,
            Key={"lease_key": {"S": keys.lease_key(stream_id, shard_id)}},
            UpdateExpression=expression,
            ExpressionAttributeValues=values,
        )
