"""DynamoDB side of fan-out-on-read: who is huge, durably.

An author is promoted when a fan-out finds the profile's ``followers_count`` (which the app keeps
on ``USER#{id}``/``PROFILE``) at or above the threshold; the promotion is written as a
``FANOUT_ON_READ``/``AUTHOR#{id}`` item in the app table, and never taken back by feedpipe:
posts kept only in the author's list must stay readable even if the count falls again. The
Redis set of huge authors is a cache of these items. Writes go through BatchWriteItem, so a
worker needs no permission it did not have.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from feedpipe.adapters.dynamo import FeedTable
from feedpipe.core import keys
from feedpipe.core.timestamps import now_timestamp


class HugeAuthorTable:
    def __init__(self, table: FeedTable) -> None:
        self.table = table

    def followers_count(self, author_id: str) -> int:
        """The author's ``followers_count`` now (strongly consistent); 0 without a profile."""
        response = self.table.client.get_item(
            TableName=self.table.name,
            Key={"PK": {"S": keys.user_pk(author_id)}, "SK": {"S": keys.PROFILE_SK}},
            ProjectionExpression="followers_count",
            ConsistentRead=True,
        )
        raw = response.get("Item", {}).get("followers_count", {}).get("N")
        try:
            return int(Decimal(raw)) if raw is not None else 0
        except (ArithmeticError, ValueError):
            return 0  # a count the app wrote badly promotes nobody

    def register(self, author_id: str, followers_count: int) -> None:
        """Record the promotion (idempotent: the same key, overwritten)."""
        item = {
            "PK": {"S": keys.FANOUT_ON_READ_PK},
            "SK": {"S": keys.huge_author_sk(author_id)},
            "author_id": {"S": author_id},
            "followers_count": {"N": str(followers_count)},
            "registered_at": {"S": now_timestamp()},
        }
        self.table.put_items([item])

    def registered(self) -> list[str]:
        """Every huge author (strongly consistent, every page)."""
        ids = (keys.strip_prefix(i["SK"]["S"], keys.AUTHOR_PREFIX) for page in self._pages() for i in page)
        return [i for i in ids if i]

    def _pages(self) -> Iterator[list[dict[str, Any]]]:
        request: dict[str, Any] = {
            "TableName": self.table.name,
            "KeyConditionExpression": "PK = :pk AND begins_with(SK, :sk)",
            "ExpressionAttributeValues": {
                ":pk": {"S": keys.FANOUT_ON_READ_PK},
                ":sk": {"S": keys.AUTHOR_PREFIX},
            },
            "ProjectionExpression": "SK",
            "ConsistentRead": True,
        }
        while True:
            response = self.table.client.query(**request)
            yield response.get("Items", [])
            if not response.get("LastEvaluatedKey"):
                return
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
