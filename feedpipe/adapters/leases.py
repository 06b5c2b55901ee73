"""Shard leases in feedpipe's lease table (DynamoDB), as the Kinesis Client Library keeps them.

One item per shard, ``lease_key = {stream_id}|{shard_id}``::

    shard_id          the shard
    parent_shard_ids  its parents (string set), so children wait for them
    owner             the consumer holding it (absent: free to take)
    counter           bumped by every renew, take and hand-back; a counter that stops moving
                      for the failover time means its owner is dead (no clock sync needed)
    checkpoint        last sequence number whose work is durably enqueued, or SHARD_END
                      (LATEST, TRIM_HORIZON: a first start at the newest record, see below)
    last_record_ms    approximate time of that record (for lag)
    updated_at        when the checkpoint last moved

Every write is conditional, so two consumers never both believe they hold a lease: a take
names the counter it saw, a renew or checkpoint the owner it is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from feedpipe.core import keys
from feedpipe.core.attributes import from_image
from feedpipe.core.timestamps import now_timestamp

SHARD_END = "SHARD_END"
# Checkpoints a first start at FEEDPIPE_INITIAL_POSITION=LATEST writes: LATEST until the holder
# has found the shard's newest record, TRIM_HORIZON when the shard had none (read it all).
LATEST = "LATEST"
TRIM_HORIZON = "TRIM_HORIZON"


class LeaseLostError(Exception):
    """Another consumer holds the lease now; the shard must be dropped."""


@dataclass(frozen=True, slots=True)
class Lease:
    shard_id: str
    counter: int = 0
    owner: str | None = None
    checkpoint: str | None = None
    parent_ids: tuple[str, ...] = ()
    last_record_ms: int | None = None
    updated_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.checkpoint == SHARD_END


class LeaseTable:
    def __init__(self, client: Any, table_name: str, stream_id: str) -> None:
        self.client = client
        self.table = table_name
        self.stream_id = stream_id

    def _key(self, shard_id: str) -> dict[str, Any]:
        return {"lease_key": {"S": keys.lease_key(self.stream_id, shard_id)}}

    def list(self) -> dict[str, Lease]:
        """Every lease of this stream, read strongly consistent."""
        prefix = keys.lease_key(self.stream_id, "")
        request: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(lease_key, :p)",
            "ExpressionAttributeValues": {":p": {"S": prefix}},
            "ConsistentRead": True,
        }
        found: dict[str, Lease] = {}
        while True:
            response = self.client.scan(**request)
            for raw in response.get("Items", []):
                lease = _lease(from_image(raw), raw["lease_key"]["S"][len(prefix) :])
                found[lease.shard_id] = lease
            if not response.get("LastEvaluatedKey"):
                return found
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def create(self, shard_id: str, parent_ids: tuple[str, ...], checkpoint: str | None = None) -> bool:
        """A free lease for a newly found shard; False when one exists already."""
        item: dict[str, Any] = {**self._key(shard_id), "shard_id": {"S": shard_id}, "counter": {"N": "0"}}
        if checkpoint:
            item["checkpoint"] = {"S": checkpoint}
        if parent_ids:
            item["parent_shard_ids"] = {"SS": list(parent_ids)}
        return self._conditional("put_item", Item=item, ConditionExpression="attribute_not_exists(lease_key)")

    def take(self, lease: Lease, owner: str) -> Lease | None:
        """Take ``lease`` as seen (free, expired, or stolen); None if it changed meanwhile."""
        taken = self._conditional(
            "update_item",
            Key=self._key(lease.shard_id),
            UpdateExpression="SET #o = :me, #c = :next",
            # The item must still be there: an update would otherwise create it, bringing back
            # the lease of a finished shard that a lineage cleanup deleted since it was seen.
            ConditionExpression="attribute_exists(lease_key) AND (#c = :seen OR attribute_not_exists(#c))",
            ExpressionAttributeNames={"#o": "owner", "#c": "counter"},
            ExpressionAttributeValues=_values(me=owner, next=lease.counter + 1, seen=lease.counter),
        )
        return replace(lease, owner=owner, counter=lease.counter + 1) if taken else None

    def renew(self, lease: Lease, owner: str) -> Lease | None:
        renewed = self._conditional(
            "update_item",
            Key=self._key(lease.shard_id),
            UpdateExpression="SET #c = :next",
            ConditionExpression="#o = :me AND #c = :seen",
            ExpressionAttributeNames={"#o": "owner", "#c": "counter"},
            ExpressionAttributeValues=_values(me=owner, next=lease.counter + 1, seen=lease.counter),
        )
        return replace(lease, counter=lease.counter + 1) if renewed else None

    def checkpoint(self, lease: Lease, owner: str, checkpoint: str, last_record_ms: int | None) -> Lease:
        """Move the checkpoint; LeaseLostError if ``owner`` no longer holds the lease."""
        expression = "SET checkpoint = :cp, updated_at = :at"
        values = _values(me=owner, cp=checkpoint, at=now_timestamp())
        if last_record_ms is not None:
            expression += ", last_record_ms = :ms"
            values[":ms"] = {"N": str(last_record_ms)}
        if not self._conditional(
            "update_item",
            Key=self._key(lease.shard_id),
            UpdateExpression=expression,
            ConditionExpression="#o = :me",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues=values,
        ):
            raise LeaseLostError(f"lease of shard {lease.shard_id} is held by another consumer")
        return replace(lease, checkpoint=checkpoint, last_record_ms=last_record_ms)

    def release(self, lease: Lease, owner: str) -> bool:
        """Hand the lease back at once (free to take, no failover wait)."""
        return self._conditional(
            "update_item",
            Key=self._key(lease.shard_id),
            UpdateExpression="REMOVE #o SET #c = #c + :one",
            ConditionExpression="#o = :me",
            ExpressionAttributeNames={"#o": "owner", "#c": "counter"},
            ExpressionAttributeValues=_values(me=owner, one=1),
        )

    def delete_finished(self, shard_id: str) -> bool:
        return self._conditional(
            "delete_item",
            Key=self._key(shard_id),
            ConditionExpression="checkpoint = :end",
            ExpressionAttributeValues=_values(end=SHARD_END),
        )

    def _conditional(self, operation: str, **request: Any) -> bool:
        try:
            getattr(self.client, operation)(TableName=self.table, **request)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True


def _values(**values: str | int) -> dict[str, Any]:
    return {f":{k}": ({"N": str(v)} if isinstance(v, int) else {"S": v}) for k, v in values.items()}


def _lease(item: dict[str, Any], shard_id: str) -> Lease:
    parents = item.get("parent_shard_ids") or set()
    last = item.get("last_record_ms")
    return Lease(
        shard_id=str(item.get("shard_id", shard_id)),
        counter=int(item.get("counter", 0)),
        owner=item.get("owner"),
        checkpoint=item.get("checkpoint"),
        parent_ids=tuple(sorted(parents)),
        last_record_ms=None if last is None else int(last),
        updated_at=item.get("updated_at"),
    )
