"""Rebuilding feeds: the cache from the durable feed, and the durable feed from the truth.

A cache rebuild swaps the whole sorted set in one Lua call (readers see the old feed or the
new one), then re-reads the durable feed and applies what changed meanwhile. A post fanned out
while the rebuild read is therefore never lost, without a marker key in another slot: its
durable write precedes its cache write, so either the re-read sees it or its own cache write
lands after the swap (Mastodon uses a regeneration marker for the same race).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from feedpipe.core.entries import CacheEntry
from feedpipe.core.events import Post
from feedpipe.core.records import RecordError, post_from_feed_item
from feedpipe.feeds.delivery import MAX_SETTLE_ROUNDS
from feedpipe.feeds.follows import backfill, posts_of, remove_posts, settle_follow, unmerge
from feedpipe.feeds.stores import Stores


def rebuild_cache(stores: Stores, user_id: str, keep_ttl: bool = False) -> int:
    """Make ``feed:{user_id}`` equal the newest ``feed_max_length`` durable items; returns
    their number. ``keep_ttl`` keeps the key's remaining TTL (scheduled rebuilds must not keep
    an inactive user warm for ever)."""
    entries = newest_entries(stores, user_id)
    stores.cache.replace_feed(user_id, entries, keep_ttl=keep_ttl)
    for _ in range(MAX_SETTLE_ROUNDS):
        # Any write before this read is in it; any write after it reaches the cache itself.
        again = newest_entries(stores, user_id)
        if again == entries:
            break
        stores.cache.replace_feed(user_id, again, keep_ttl=True)
        entries = again
    return len(entries)


def newest_entries(stores: Stores, user_id: str, limit: int | None = None) -> list[CacheEntry]:
    """The newest ``limit`` (default ``feed_max_length``) durable items as cache entries;
    items feedpipe did not build are skipped."""
    entries = []
    for item in stores.table.feed_items(user_id, limit=limit or stores.settings.feed_max_length):
        try:
            post = post_from_feed_item(item)
        except RecordError:
            continue
        entries.append(stores.format.entry(post))
    return entries


@dataclass
class DurableRebuild:
    followees: int = 0
    authors_unmerged: int = 0
    posts_backfilled: int = 0
    posts_retracted: int = 0
    handed_on: bool = False  # the budget ran out: the rest is the next task's


@dataclass(frozen=True)
class RebuildResume:
    """Where a durable rebuild goes on: the step it stopped in (0 backfill, 1 unmerge, 2 retract)
    and the last author that step finished (each step takes its authors in sorted order)."""

    step: int
    after: str


HandOnRebuild = Callable[[RebuildResume], None]
Repair = Callable[[str], None]


def rebuild_durable(
    stores: Stores, user_id: str, resume: RebuildResume | None = None, hand_on: HandOnRebuild | None = None
) -> DurableRebuild:
    """Repair ``FEED#{user_id}`` from the source of truth: every followee's newest live posts
    backfilled (``backfill_posts`` each), every other author's posts taken out, dead posts
    retracted; each step settles as the stream's own tasks do. With ``hand_on``, a rebuild that
    has run for ``task_budget_seconds`` stops after an author and hands the rest on (a user who
    follows thousands would otherwise outlive the visibility timeout); every step is
    idempotent, so the rebuild that goes on from ``resume`` ends where one run would."""
    deadline = time.monotonic() + stores.settings.task_budget_seconds
    followees = set(stores.table.followees(user_id))
    result = DurableRebuild(followees=len(followees))
    start = resume or RebuildResume(0, "")
    for step, (authors, repair) in enumerate(_steps(stores, user_id, followees, result)):
        for author in authors if step >= start.step else ():
            if step == start.step and author <= start.after:
                continue
            repair(author)
            if hand_on is not None and time.monotonic() > deadline:
                hand_on(RebuildResume(step, author))
                result.handed_on = True
                return result
    return result


def _steps(
    stores: Stores, user_id: str, followees: set[str], result: DurableRebuild
) -> Iterator[tuple[list[str], Repair]]:
    """The rebuild's steps, each its authors and what is done for one; lazily, so a rebuild
    resumed at a later step skips the reads of earlier ones."""
    in_feed = posts_of(stores.table.feed_items(user_id))

    def add(author: str) -> None:
        result.posts_backfilled += backfill(stores, user_id, author)

    yield sorted(followees), add

    def drop(author: str) -> None:
        unmerge(stores, user_id, author)
        result.authors_unmerged += 1

    yield sorted({p.author_id for p in in_feed} - followees), drop
    live = stores.table.live_post_ids([p.post_id for p in in_feed], stores.excluded)
    dead: dict[str, list[Post]] = {}
    for post in in_feed:
        if post.author_id in followees and post.post_id not in live:
            dead.setdefault(post.author_id, []).append(post)

    def retract(author: str) -> None:
        remove_posts(stores, user_id, dead[author])
        settle_follow(stores, user_id, author, present=[], absent=dead[author])
        result.posts_retracted += len(dead[author])

    yield sorted(dead), retract
