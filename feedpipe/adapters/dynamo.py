"""DynamoDB: the app table's follower and post reads, and feedpipe's feed-item writes.

Writes go through the low-level client with pre-built wire-format items (the resource layer
costs ~3x the CPU per item). BatchWriteItem calls carry at most 25 requests with unique keys;
``UnprocessedItems`` are retried with capped exponential backoff and full jitter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, NoRegionError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from feedpipe.adapters.aws_errors import is_throttling
from feedpipe.adapters.read_pace import ReadPace, consumed_units
from feedpipe.adapters.user_scan import user_pages
from feedpipe.adapters.write_budget import WriteBudget
from feedpipe.config import ConfigError
from feedpipe.core import keys
from feedpipe.core.attributes import from_image
from feedpipe.core.backoff import full_jitter
from feedpipe.core.events import Post
from feedpipe.core.follower_segments import Segment
from feedpipe.core.items import Item, Key
from feedpipe.core.planning import chunked, write_groups
from feedpipe.core.records import RecordError, is_live, post_from_image

READ_BATCH_LIMIT = 100  # BatchGetItem's limit per call
UNPROCESSED_ATTEMPTS = 8
BACKOFF_MAX_SECONDS = 5.0
DEFAULT_POOL = 10  # connections a client keeps: botocore's own default


class UnprocessedError(Exception):
    """DynamoDB left part of a batch unprocessed after every retry; the task retries later."""


def make_client(service: str, max_pool: int = DEFAULT_POOL, validate: bool = True) -> Any:
    """A boto3 client; endpoint, region and credentials come from boto3's own configuration."""
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=max_pool,
        parameter_validation=validate,
    )
    try:
        return boto3.session.Session().client(service, config=config)
    except NoRegionError:
        raise ConfigError("no AWS region: set AWS_DEFAULT_REGION") from None


class _PrebuiltBatchWrites:
    """Serializes BatchWriteItem by ``json.dumps`` of its parameters, which feedpipe builds in
    DynamoDB's wire format already; botocore's serializer would walk the shape model attribute
    by attribute, most of a fan-out's CPU. Every other operation goes to botocore's own.
    Headers and everything else still come from botocore (a test pins the equivalence)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def serialize_to_request(self, parameters: dict[str, Any], operation_model: Any) -> dict[str, Any]:
        if operation_model.name != "BatchWriteItem":
            request: dict[str, Any] = self._inner.serialize_to_request(parameters, operation_model)
            return request
        request = self._inner.serialize_to_request({"RequestItems": {}}, operation_model)
        request["body"] = json.dumps(parameters, separators=(",", ":")).encode("utf-8")
        return request


def use_prebuilt_batch_writes(client: Any) -> Any:
    """Have ``client`` send feedpipe's pre-built BatchWriteItem requests as they are."""
    if not isinstance(client._serializer, _PrebuiltBatchWrites):
        client._serializer = _PrebuiltBatchWrites(client._serializer)
    return client


def _follower_ids(items: list[dict[str, Any]], segment: Segment | None) -> list[str]:
    """The follower ids of a page of GSI1 items; a segment's upper bound belongs to the next."""
    ids = (keys.strip_prefix(i["GSI1SK"]["S"], keys.FOLLOWER_PREFIX) for i in items)
    return [i for i in ids if i and (segment is None or i != segment.hi)]


class FeedTable:
    """The app's table as feedpipe uses it."""

    def __init__(self, client: Any, table_name: str, write_concurrency: int = 4) -> None:
        self.client = client
        self.name = table_name
        self.write_concurrency = write_concurrency
        self._pool: ThreadPoolExecutor | None = None
        self.on_unprocessed: Callable[[int], None] = lambda _: None
        self.budget: WriteBudget | None = None  # the shared write budget, when one is set
        self.read_pace: ReadPace | None = None  # the follower walks' shared read pace, when one is set

    # -- reads -----------------------------------------------------------------------------

    def follower_pages(self, author_id: str, page_size: int | None = None) -> Iterator[list[str]]:
        """Every follower of ``author_id``, one GSI1 page at a time, all pages."""
        for ids, _ in self.follower_pages_from(author_id, page_size):
            yield ids

    def follower_pages_from(
        self, author_id: str, page_size: int | None = None, start: Key | None = None, segment: Segment | None = None
    ) -> Iterator[tuple[list[str], Key | None]]:
        """The followers of ``author_id`` (those of ``segment`` only, when given) from ``start``
        on (a key a page ended at), one GSI1 page at a time, each with the key it ended at (None
        after the last page)."""
        request = {**self._followers_request(author_id, segment), "ProjectionExpression": "GSI1SK"}
        if page_size:
            request["Limit"] = page_size
        if start:
            request["ExclusiveStartKey"] = start
        for page, last in self._follower_pages(author_id, request):
            yield _follower_ids(page, segment), last

    def last_follower(self, author_id: str, segment: Segment | None = None) -> str | None:
        """The highest follower id of ``author_id`` (in ``segment``, when given)."""
        request = {**self._followers_request(author_id, segment), "ProjectionExpression": "GSI1SK",
                   "ScanIndexForward": False, "Limit": 2}  # the segment's upper bound itself may come first
        for page, _ in self._follower_pages(author_id, request, wait=False):  # one item: no read to pace after it
            ids = _follower_ids(page, segment)
            if ids:
                return ids[0]
        return None

    def _follower_pages(
        self, author_id: str, request: dict[str, Any], wait: bool = True
    ) -> Iterator[tuple[list[dict[str, Any]], Key | None]]:
        """Pages of the author's GSI1 partition, each charged to the read pace (when one is set):
        a page with more after it is handed on once its charge fits (with ``wait``), so the next
        read waits for the pace; the last page at once (``adapters.read_pace``)."""
        pace = self.read_pace
        if pace is None:
            return self._pages_with_keys("query", request)
        partition = keys.user_pk(author_id)

        def charge(response: dict[str, Any]) -> None:
            pace.spent(partition, consumed_units(response), wait=wait and bool(response.get("LastEvaluatedKey")))

        return self._pages_with_keys("query", {**request, "ReturnConsumedCapacity": "TOTAL"}, charge)

    def _followers_request(self, author_id: str, segment: Segment | None) -> dict[str, Any]:
        """A Query of the followers in ``segment``: GSI1SK from ``FOLLOWER#{lo}`` to the bound at
        ``hi``, both inclusive (a key condition takes one range); ``_follower_ids`` drops ``hi``."""
        if segment is None or segment.whole:
            return self._user_gsi1_request(author_id, keys.FOLLOWER_PREFIX)
        return {
            "TableName": self.name,
            "IndexName": keys.GSI1,
            "KeyConditionExpression": "GSI1PK = :pk AND GSI1SK BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {
                ":pk": {"S": keys.user_pk(author_id)},
                ":lo": {"S": keys.follower_gsi1sk(segment.lo)},
                ":hi": {"S": keys.follower_range_gsi1sk(segment.hi)},
            },
        }

    def recent_posts(self, author_id: str, limit: int, excluded: Collection[str]) -> list[Post]:
        """The author's newest ``limit`` live posts, newest first (GSI1, eventually consistent)."""
        request = {**self._posts_request(author_id), "Limit": max(limit, 1) * 2}
        posts: list[Post] = []
        if limit <= 0:
            return posts
        for page in self._pages("query", request):
            for raw in page:
                image = from_image(raw)
                if is_live(image, excluded):
                    try:
                        posts.append(post_from_image(image))
                    except RecordError:
                        continue  # a post the app wrote badly never enters a feed
                if len(posts) >= limit:
                    return posts
        return posts

    def newest_post_images(self, author_id: str, limit: int) -> list[dict[str, Any]]:
        """The author's newest ``limit`` post items, live or not, newest first (GSI1)."""
        request = {**self._posts_request(author_id), "Limit": max(limit, 1)}
        found: list[dict[str, Any]] = []
        for page in self._pages("query", request) if limit > 0 else ():
            found.extend(from_image(raw) for raw in page)
            if len(found) >= limit:
                break
        return found[:limit]

    def _posts_request(self, author_id: str) -> dict[str, Any]:
        return {**self._user_gsi1_request(author_id, keys.POST_PREFIX), "ScanIndexForward": False}

    def _user_gsi1_request(self, user_id: str, sk_prefix: str) -> dict[str, Any]:
        """A Query of ``user_id``'s GSI1 partition for the items whose GSI1SK has ``sk_prefix``
        (``FOLLOWER#``: their followers; ``POST#``: their posts)."""
        return {
            "TableName": self.name,
            "IndexName": keys.GSI1,
            "KeyConditionExpression": "GSI1PK = :pk AND begins_with(GSI1SK, :sk)",
            "ExpressionAttributeValues": {":pk": {"S": keys.user_pk(user_id)}, ":sk": {"S": sk_prefix}},
        }

    def post_image(self, post_id: str) -> dict[str, Any] | None:
        """The post's current item, read strongly consistent; None when it is gone."""
        response = self.client.get_item(
            TableName=self.name,
            Key={"PK": {"S": keys.post_pk(post_id)}, "SK": {"S": keys.POST_SK}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return None if item is None else from_image(item)

    def live_post_ids(self, post_ids: Iterable[str], excluded: Collection[str]) -> set[str]:
        """Which of ``post_ids`` are live now (strongly consistent)."""
        return {p for p, image in self.post_images(post_ids).items() if is_live(image, excluded)}

    def post_images(self, post_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The current items of those of ``post_ids`` that exist, by post id (strongly consistent)."""
        found = self._batch_get(
            [{"PK": {"S": keys.post_pk(p)}, "SK": {"S": keys.POST_SK}} for p in set(post_ids)],
            projection=None,
        )
        images = (from_image(raw) for raw in found)
        return {str(i.get("post_id") or keys.strip_prefix(i["PK"], keys.POST_PREFIX)): i for i in images}

    def current_followers(self, follower_ids: Iterable[str], followed_id: str) -> set[str]:
        """Which of ``follower_ids`` follow ``followed_id`` now (base table, strongly consistent)."""
        sk = {"S": keys.following_sk(followed_id)}
        found = self._batch_get(
            [{"PK": {"S": keys.user_pk(f)}, "SK": sk} for f in set(follower_ids)], projection="PK"
        )
        return {keys.strip_prefix(i["PK"]["S"], keys.USER_PREFIX) or "" for i in found}

    def followees(self, user_id: str) -> list[str]:
        """Everyone ``user_id`` follows (base table, strongly consistent)."""
        request = {
            "TableName": self.name,
            "KeyConditionExpression": "PK = :pk AND begins_with(SK, :sk)",
            "ExpressionAttributeValues": {
                ":pk": {"S": keys.user_pk(user_id)},
                ":sk": {"S": keys.FOLLOWING_PREFIX},
            },
            "ProjectionExpression": "SK",
            "ConsistentRead": True,
        }
        ids = (keys.strip_prefix(i["SK"]["S"], keys.FOLLOWING_PREFIX) for p in self._pages("query", request) for i in p)
        return [i for i in ids if i]

    def feed_items_by_author(self, user_id: str, author_id: str) -> list[dict[str, Any]]:
        """The items in ``user_id``'s durable feed that ``author_id`` wrote, as plain dicts."""
        request = {
            "TableName": self.name,
            "KeyConditionExpression": "PK = :pk",
            "FilterExpression": "author_id = :a",
            "ExpressionAttributeValues": {
                ":pk": {"S": keys.feed_pk(user_id)},
                ":a": {"S": author_id},
            },
            "ConsistentRead": True,
        }
        return [from_image(i) for page in self._pages("query", request) for i in page]

    def feed_items(self, user_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        """``user_id``'s durable feed, newest first, as plain dicts."""
        request: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": "PK = :pk",
            "ExpressionAttributeValues": {":pk": {"S": keys.feed_pk(user_id)}},
            "ScanIndexForward": False,
            "ConsistentRead": True,
        }
        if limit:
            request["Limit"] = limit
        items: list[dict[str, Any]] = []
        for page in self._pages("query", request):
            items.extend(from_image(i) for i in page)
            if limit and len(items) >= limit:
                return items[:limit]
        return items

    def feed_key_pages(self, user_id: str) -> Iterator[list[Key]]:
        """``user_id``'s durable feed keys, newest first, a page at a time (a trim never holds
        a whole feed)."""
        request = {
            "TableName": self.name,
            "KeyConditionExpression": "PK = :pk",
            "ExpressionAttributeValues": {":pk": {"S": keys.feed_pk(user_id)}},
            "ScanIndexForward": False,
            "ProjectionExpression": "PK, SK",
        }
        yield from self._pages("query", request)

    def user_page(
        self, segment: int, total_segments: int, start: Key | None, page_items: int
    ) -> tuple[list[str], Key | None]:
        """One Scan page of the app's users in a segment, and where the next page starts."""
        return next(user_pages(self.client, self.name, segment, total_segments, start, page_items))

    def feed_owners_page(self, cursor: Key | None, max_pages: int, page_size: int) -> tuple[list[str], Key | None]:
        """The distinct feed owners of up to ``max_pages`` Scan pages after ``cursor``, in Scan
        order, and where the next call starts (None: the table is done)."""
        request: dict[str, Any] = {
            "TableName": self.name,
            "FilterExpression": "begins_with(PK, :feed)",
            "ExpressionAttributeValues": {":feed": {"S": keys.FEED_PREFIX}},
            "ProjectionExpression": "PK",
            "Limit": page_size,
        }
        owners: dict[str, None] = {}
        for _ in range(max(max_pages, 1)):
            if cursor:
                request["ExclusiveStartKey"] = cursor
            response: dict[str, Any] = self.client.scan(**request)
            ids = (keys.strip_prefix(i["PK"]["S"], keys.FEED_PREFIX) for i in response.get("Items", []))
            owners.update(dict.fromkeys(i for i in ids if i))
            cursor = response.get("LastEvaluatedKey") or None
            if cursor is None:
                break
        return list(owners), cursor

    def _pages(self, operation: str, request: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        for page, _ in self._pages_with_keys(operation, request):
            yield page

    def _pages_with_keys(
        self, operation: str, request: dict[str, Any], on_response: Callable[[dict[str, Any]], None] | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], Key | None]]:
        call: Callable[..., dict[str, Any]] = getattr(self.client, operation)
        request = dict(request)
        while True:
            response = call(**request)
            if on_response is not None:
                on_response(response)
            last = response.get("LastEvaluatedKey") or None
            yield response.get("Items", []), last
            if not last:
                return
            request["ExclusiveStartKey"] = last

    def _batch_get(self, wanted: list[Key], projection: str | None) -> list[dict[str, Any]]:
        """Strongly consistent reads, 100 keys a call, the calls in parallel on the write pool."""
        groups = list(chunked(wanted, READ_BATCH_LIMIT))

        def read(group: list[Key]) -> list[dict[str, Any]]:
            return self._get_group(group, projection)

        if len(groups) <= 1 or self.write_concurrency == 1:
            return [item for group in groups for item in read(group)]
        return [item for found in self._executor().map(read, groups) for item in found]

    def _get_group(self, group: list[Key], projection: str | None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        request: dict[str, Any] = {"Keys": group, "ConsistentRead": True}
        if projection:
            request["ProjectionExpression"] = projection
        pending = {self.name: request}
        for attempt in _unprocessed_retrying():
            with attempt:
                response = self.client.batch_get_item(RequestItems=pending)
                found.extend(response.get("Responses", {}).get(self.name, []))
                pending = response.get("UnprocessedKeys") or {}
                if pending:
                    raise UnprocessedError(f"{len(pending[self.name]['Keys'])} keys unread")
        return found

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.write_concurrency, thread_name_prefix="ddb")
        return self._pool

    # -- writes ----------------------------------------------------------------------------

    def put_items(self, items: Iterable[Item]) -> int:
        """Write feed items; returns how many were written. Idempotent: same key, same item."""
        requests = ((_key_of(i), {"PutRequest": {"Item": i}}) for i in items)
        return self._write(write_groups(requests))

    def delete_keys(self, item_keys: Iterable[Key]) -> int:
        requests = ((k, {"DeleteRequest": {"Key": k}}) for k in item_keys)
        return self._write(write_groups(requests))

    def _write(self, groups: Iterable[list[dict[str, Any]]]) -> int:
        groups = list(groups)
        if len(groups) <= 1 or self.write_concurrency == 1:
            return sum(map(self.write_group, groups))
        return sum(self._executor().map(self.write_group, groups))

    def write_group(self, group: list[dict[str, Any]]) -> int:
        """One BatchWriteItem call (<= 25 requests), retrying what DynamoDB leaves unprocessed;
        each call (a retry too) first waits for its writes to fit in the budget, if one is set."""
        pending = {self.name: group}
        for attempt in _unprocessed_retrying():
            with attempt:
                response = self._batch_write(pending)
                pending = response.get("UnprocessedItems") or {}
                if pending:
                    self.on_unprocessed(len(pending[self.name]))
                    if self.budget is not None:
                        self.budget.on_throttle()
                    raise UnprocessedError(f"{len(pending[self.name])} writes unprocessed")
        return len(group)

    def _batch_write(self, pending: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        if self.budget is None:
            response: dict[str, Any] = self.client.batch_write_item(RequestItems=pending)
            return response
        self.budget.acquire(len(pending[self.name]))
        try:
            response = self.client.batch_write_item(RequestItems=pending)
        except ClientError as exc:
            if is_throttling(exc):
                self.budget.on_throttle()
            raise
        return response

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _key_of(item: Item) -> Key:
    return {"PK": item["PK"], "SK": item["SK"]}


def _unprocessed_retrying() -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(UnprocessedError),
        wait=lambda state: full_jitter(0.05, state.attempt_number, BACKOFF_MAX_SECONDS),
        stop=stop_after_attempt(UNPROCESSED_ATTEMPTS),
        reraise=True,
    )
