"""The app's users, found by a Scan of the table: every one (a paged, optionally parallel Scan)
or a random sample of a few (one random slice of it).

A sample reads one Scan segment out of ``item_count / SAMPLE_SEGMENT_ITEMS`` chosen at random,
so its cost stays near one segment's items however big the table is, and every user has the
same chance to be picked over time (segments are hash ranges of the partition key).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from feedpipe.core import keys

SAMPLE_SEGMENT_ITEMS = 2000  # items a sample's one segment holds on average
MAX_SEGMENTS = 1_000_000  # DynamoDB's limit on TotalSegments


def user_pages(
    client: Any, table: str, segment: int = 0, total_segments: int = 1, start: dict[str, Any] | None = None,
    page_items: int | None = None,
) -> Iterator[tuple[list[str], dict[str, Any] | None]]:
    """The user ids of one Scan segment (all of it by default), a page at a time (of up to
    ``page_items`` items read, users or not), each with the key the page ended at (None after
    the last): a caller can resume from any page."""
    request: dict[str, Any] = {
        "TableName": table,
        "FilterExpression": "SK = :profile AND begins_with(PK, :user)",
        "ExpressionAttributeValues": {":profile": {"S": keys.PROFILE_SK}, ":user": {"S": keys.USER_PREFIX}},
        "ProjectionExpression": "PK",
    }
    if total_segments > 1:
        request.update(Segment=segment, TotalSegments=total_segments)
    if start:
        request["ExclusiveStartKey"] = start
    if page_items:
        request["Limit"] = page_items
    while True:
        response = client.scan(**request)
        last = response.get("LastEvaluatedKey") or None
        ids = (keys.strip_prefix(i["PK"]["S"], keys.USER_PREFIX) for i in response.get("Items", []))
        yield [i for i in ids if i], last
        if last is None:
            return
        request["ExclusiveStartKey"] = last


def all_users(client: Any, table: str) -> Iterator[str]:
    for ids, _ in user_pages(client, table):
        yield from ids


def sample_users(client: Any, table: str, count: int, rng: random.Random | None = None) -> list[str]:
    """About ``count`` users picked at random: those of random Scan segments, in turn from a
    random one, until enough are found (or the table has been read once)."""
    rng = rng or random.Random()
    total = segment_count(client, table)
    first = rng.randrange(total)
    found: list[str] = []
    for step in range(total):
        segment = (first + step) % total
        found += [u for ids, _ in user_pages(client, table, segment, total) for u in ids]
        if len(found) >= count:
            break
    return rng.sample(found, min(count, len(found)))


def segment_count(client: Any, table: str) -> int:
    """How many segments to cut the table in for a sample (DescribeTable's item count is
    refreshed about every six hours: a rough size is all this needs)."""
    items = int(client.describe_table(TableName=table)["Table"].get("ItemCount", 0))
    return max(1, min(MAX_SEGMENTS, items // SAMPLE_SEGMENT_ITEMS))
