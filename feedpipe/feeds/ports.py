"""The storage the feed rules work on, as small interfaces: exactly the calls the rules make.

The real adapters (``adapters.dynamo.FeedTable``, ``adapters.redis_feeds.FeedCache``,
``adapters.author_posts.AuthorPosts``, ``adapters.huge_authors.HugeAuthorTable``,
``adapters.redis_feeds.RedisCursors``, ``adapters.backfill_progress.BackfillProgress``) satisfy
them structurally, and so do the in-memory
stores of ``feeds.memory``; one contract test (``tests/adapters/test_store_contract.py``) runs
the same assertions against both, so the two cannot drift.

Shapes shared by every implementation: a post image or feed item is a plain dict (DynamoDB's
typed JSON already decoded); a durable key (``Key``) is in DynamoDB's wire form
(``{"PK": {"S": ...}, "SK": {"S": ...}}``); a cache entry, going in or coming out, is a
``core.entries.CacheEntry`` (score, member).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, Protocol

from feedpipe.core.entries import CacheEntry
from feedpipe.core.events import Post
from feedpipe.core.follower_segments import Segment
from feedpipe.core.items import Item, Key
from feedpipe.core.segments import Cursor, SegmentProgress

Image = dict[str, Any]


class PostsAndFollows(Protocol):
    """The app's truth: posts and follow edges (the base table and GSI1)."""

    def follower_pages_from(
        self, author_id: str, page_size: int | None = None, start: Key | None = None, segment: Segment | None = None
    ) -> Iterator[tuple[list[str], Key | None]]: ...

    def last_follower(self, author_id: str, segment: Segment | None = None) -> str | None: ...

    def recent_posts(self, author_id: str, limit: int, excluded: Collection[str]) -> list[Post]: ...

    def newest_post_images(self, author_id: str, limit: int) -> list[Image]: ...

    def post_image(self, post_id: str) -> Image | None: ...

    def post_images(self, post_ids: Iterable[str]) -> dict[str, Image]: ...

    def live_post_ids(self, post_ids: Iterable[str], excluded: Collection[str]) -> set[str]: ...

    def current_followers(self, follower_ids: Iterable[str], followed_id: str) -> set[str]: ...

    def followees(self, user_id: str) -> list[str]: ...

    def user_page(
        self, segment: int, total_segments: int, start: Key | None, page_items: int
    ) -> tuple[list[str], Key | None]: ...


class DurableFeeds(Protocol):
    """``FEED#{user}`` partitions: feed items keyed by user and SK."""

    def feed_items(self, user_id: str, limit: int | None = None) -> list[Image]: ...

    def feed_items_by_author(self, user_id: str, author_id: str) -> list[Image]: ...

    def feed_key_pages(self, user_id: str) -> Iterator[list[Key]]: ...

    def feed_owners_page(
        self, cursor: Key | None, max_pages: int, page_size: int
    ) -> tuple[list[str], Key | None]: ...

    def put_items(self, items: Iterable[Item]) -> int: ...

    def delete_keys(self, item_keys: Iterable[Key]) -> int: ...


class FeedTableLike(PostsAndFollows, DurableFeeds, Protocol):
    """The one table both live in."""


class CachedFeeds(Protocol):
    """``feed:{user}`` sorted sets, written only where warm (CONTRACT section 3)."""

    def add_to_warm_feeds(self, user_ids: Iterable[str], entry: CacheEntry) -> int: ...

    def add_many_if_warm(self, user_id: str, entries: Sequence[CacheEntry]) -> bool: ...

    def remove_post(self, user_ids: Iterable[str], score: int, post_id: str) -> int: ...

    def remove_entries(self, entries: Iterable[tuple[str, int, str]]) -> int: ...

    def remove_author(self, user_id: str, author_id: str) -> int: ...

    def replace_feed(self, user_id: str, entries: Sequence[CacheEntry], keep_ttl: bool = False) -> int: ...

    def is_warm(self, user_id: str) -> bool: ...

    def warm_users_page(self, cursor: str, count: int) -> tuple[str, list[str]]: ...

    def drop_follow_caches(self, follower_id: str, followed_id: str) -> None: ...

    def members_with_ttl(self, user_id: str) -> tuple[list[CacheEntry], int, int]: ...

    def members(self, user_id: str, limit: int | None = None) -> list[CacheEntry]: ...

    # The bounded sweep that caps every cached feed (``feeds.trimming``): a walk over the
    # feed keys, a page at a time (from ``core.keys.WALK_START`` until it comes back; a key may repeat),
    # and each page capped at its newest ``max_length`` in one round trip.

    def feed_keys_page(self, cursor: str, count: int) -> tuple[str, list[str]]: ...

    def trim_feeds(self, feed_keys: Sequence[str], max_length: int) -> list[int]:
        """How many members each feed lost; a key that is no feed (any more) loses none."""
        ...


class AuthorLists(Protocol):
    """Fan-out-on-read's per-author lists and the set of huge authors (both caches)."""

    def add_if_present(self, author_id: str, entries: Sequence[CacheEntry]) -> bool: ...

    def add_many(self, author_id: str, entries: Sequence[CacheEntry]) -> None: ...

    def remove_posts(self, author_id: str, posts: Iterable[tuple[int, str]]) -> int: ...

    def newest(self, author_ids: Sequence[str], limit: int) -> dict[str, list[CacheEntry]]: ...

    def load_huge(self, author_ids: Iterable[str]) -> None: ...

    def add_huge_if_loaded(self, author_id: str) -> bool: ...

    def huge_among(self, user_ids: Sequence[str]) -> list[str] | None: ...


class HugeAuthors(Protocol):
    """Who is huge, durably, and the profile count that promotes them."""

    def followers_count(self, author_id: str) -> int: ...

    def register(self, author_id: str, followers_count: int) -> None: ...

    def registered(self) -> list[str]: ...


class Cursors(Protocol):
    """Where a periodic sweep goes on: one string per name, gone once the sweep is done."""

    def load(self, name: str) -> str | None: ...

    def save(self, name: str, value: str) -> None: ...

    def clear(self, name: str) -> None: ...


class BackfillSegments(Protocol):
    """Where each segment of ``feedpipe backfill``'s parallel Scan stands (the lease table)."""

    def start(self, total: int) -> list[SegmentProgress]:
        """Every segment's progress, created where missing (a rerun resumes the rest)."""
        ...

    def all(self, total: int) -> list[SegmentProgress]: ...

    def get(self, total: int, segment: int) -> SegmentProgress: ...

    def advance(self, seen: SegmentProgress, resume: Cursor | None, users: int) -> SegmentProgress | None:
        """Record a page built after ``seen``; None when someone else moved the segment first."""
        ...

    def clear(self, total: int) -> None: ...
