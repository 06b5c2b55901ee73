"""Keeping feeds bounded: cached ``feed:*`` sorted sets capped, durable ``FEED#`` partitions trimmed.

Both sweeps are built for a periodic task on a live system, so every step is small: Redis is
walked with SCAN (never KEYS) one slice at a time, each slice trimmed in one non-transactional
pipeline, so no single call holds the server (on a Redis Cluster the walk goes through every
primary in turn); DynamoDB is walked a bounded number of Scan pages
per call, and the caller carries the cursor to the next run. Every trim is idempotent, so a
slice or page seen twice (SCAN may repeat keys, a crashed task reruns its cursor) costs only time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from feedpipe.core.keys import WALK_START
from feedpipe.feeds.ports import CachedFeeds, DurableFeeds

T = TypeVar("T")
P = ParamSpec("P")

DEFAULT_SCAN_COUNT = 500
DEFAULT_MAX_PAGES = 10
DEFAULT_PAGE_SIZE = 1000


@dataclass(slots=True)
class SweepStats:
    """What one cache sweep did; ``slowest_call_seconds`` lets operators see it never blocked Redis."""

    keys_seen: int = 0
    keys_trimmed: int = 0
    members_removed: int = 0
    slices: int = 0
    slowest_call_seconds: float = 0.0
    next_cursor: str = WALK_START  # where a sweep that spent its budget goes on; WALK_START: done

    def timed(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one Redis round trip, keeping the slowest: the bound the sweep promises to keep."""
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.slowest_call_seconds = max(self.slowest_call_seconds, time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class DurableSweep:
    """One bounded step of the table sweep; ``next_cursor`` (DynamoDB typed JSON) resumes it."""

    users_trimmed: int
    items_deleted: int
    next_cursor: dict[str, Any] | None


def sweep_cached_feeds(
    cache: CachedFeeds,
    max_length: int,
    *,
    scan_count: int = DEFAULT_SCAN_COUNT,
    cursor: str = WALK_START,
    budget_seconds: float | None = None,
) -> SweepStats:
    """Cap every cached feed at its newest ``max_length`` members.

    Fan-out already trims on write; this catches feeds written by other paths (or before the
    cap changed). Only sorted sets are feeds, so the app's other ``feed:`` names are never
    touched. With ``budget_seconds`` the walk stops after the slice
    that spends it: call again from ``next_cursor`` (a task hands it to a fresh message, so a
    sweep of millions of keys never outlives the broker's visibility timeout)."""
    if max_length < 1:
        raise ValueError("max_length must be at least 1: 0 would empty every feed")
    stats = SweepStats()
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    while True:
        cursor, found = stats.timed(cache.feed_keys_page, cursor, scan_count)
        stats.slices += 1
        stats.keys_seen += len(found)
        if found:
            for removed in stats.timed(cache.trim_feeds, found, max_length):
                if removed:
                    stats.keys_trimmed += 1
                    stats.members_removed += removed
        if cursor == WALK_START or (deadline is not None and time.monotonic() > deadline):
            stats.next_cursor = cursor
            return stats


def trim_durable_feed(table: DurableFeeds, user_id: str, keep: int) -> int:
    """Delete all but the newest ``keep`` items of ``user_id``'s durable feed; returns how many.

    Newest first (the SK starts with created_at), deleting each page's surplus before reading
    the next, so a feed of any size costs one page of keys in memory. Items a concurrent fan-out
    adds meanwhile are at worst left for the next sweep, never lost from the newest ``keep``."""
    if keep < 0:
        raise ValueError("keep must not be negative")
    seen = deleted = 0
    for page in table.feed_key_pages(user_id):
        surplus = page[max(keep - seen, 0) :]
        seen += len(page)
        if surplus:
            deleted += table.delete_keys(surplus)
    return deleted


def sweep_durable_feeds(
    table: DurableFeeds,
    keep: int,
    *,
    cursor: dict[str, Any] | None = None,
    max_pages: int = DEFAULT_MAX_PAGES,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> DurableSweep:
    """Trim the durable feeds found in up to ``max_pages`` Scan pages after ``cursor``.

    Bounded so a periodic task never runs long: call again with ``next_cursor`` until it is
    None. A user whose items straddle two calls is trimmed in both, which is harmless."""
    users, next_cursor = table.feed_owners_page(cursor, max_pages, page_size)
    deleted = sum(trim_durable_feed(table, user_id, keep) for user_id in users)
    return DurableSweep(users_trimmed=len(users), items_deleted=deleted, next_cursor=next_cursor)
