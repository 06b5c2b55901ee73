"""Where ``feedpipe backfill`` stands, one item per Scan segment in feedpipe's lease table.

Each item says where its segment's Scan goes on (the last page's ``LastEvaluatedKey``), how
many users it has built, and whether it is done. Every move is conditional on the version read,
so two tasks on one segment (a redelivered message, a second ``feedpipe backfill``) never both
move it: the one that loses stops, the other goes on. A ``kill -9`` anywhere costs at most the
page in hand, built again (every build is idempotent).
"""

from __future__ import annotations

import json
from typing import Any

from feedpipe.core import keys
from feedpipe.core.attributes import from_image
from feedpipe.core.segments import Cursor, SegmentProgress


class BackfillProgress:
    """``feeds.ports.BackfillSegments`` in the lease table."""

    def __init__(self, client: Any, lease_table: str) -> None:
        self.client = client
        self.table = lease_table

    def start(self, total: int) -> list[SegmentProgress]:
        """Every segment's progress, created where missing (a rerun resumes the rest)."""
        for segment in range(total):
            try:
                self.client.put_item(
                    TableName=self.table,
                    Item={**self._key(total, segment), "users": {"N": "0"}, "done": {"BOOL": False},
                          "version": {"N": "0"}},
                    ConditionExpression="attribute_not_exists(lease_key)",
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                continue  # started before: keep where it got to
        return self.all(total)

    def all(self, total: int) -> list[SegmentProgress]:
        return [self.get(total, segment) for segment in range(total)]

    def get(self, total: int, segment: int) -> SegmentProgress:
        item = self.client.get_item(TableName=self.table, Key=self._key(total, segment), ConsistentRead=True)
        found = from_image(item.get("Item") or {})
        resume = found.get("resume")
        return SegmentProgress(
            total, segment, json.loads(resume) if resume else None, int(found.get("users", 0)),
            found.get("done") is True, int(found.get("version", 0)),
        )

    def advance(self, seen: SegmentProgress, resume: Cursor | None, users: int) -> SegmentProgress | None:
        """Record a page built after ``seen``; None when someone else moved the segment first."""
        moved = seen.advanced(resume, users)
        values: dict[str, Any] = {
            ":users": {"N": str(moved.users)}, ":done": {"BOOL": moved.done},
            ":next": {"N": str(moved.version)}, ":seen": {"N": str(seen.version)},
        }
        update = "SET #u = :users, done = :done, version = :next"
        if resume is None:
            update += " REMOVE resume"
        else:
            update += ", resume = :resume"
            values[":resume"] = {"S": json.dumps(resume)}
        try:
            self.client.update_item(
                TableName=self.table, Key=self._key(seen.total, seen.segment), UpdateExpression=update,
                ConditionExpression="version = :seen", ExpressionAttributeNames={"#u": "users"},
                ExpressionAttributeValues=values,
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return None
        return moved

    def clear(self, total: int) -> None:
        for segment in range(total):
            self.client.delete_item(TableName=self.table, Key=self._key(total, segment))

    @staticmethod
    def _key(total: int, segment: int) -> dict[str, Any]:
        return {"lease_key": {"S": keys.backfill_key(total, segment)}}
