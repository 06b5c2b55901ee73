"""Follow (backfill the followed user's newest posts) and unfollow (unmerge them)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from feedpipe.core.events import Post
from feedpipe.core.items import feed_item_key
from feedpipe.core.merging import decode_member
from feedpipe.core.records import RecordError, post_from_feed_item
from feedpipe.feeds.delivery import count_removed, count_written, settle
from feedpipe.feeds.stores import Stores

log = logging.getLogger(__name__)


def apply_follow(stores: Stores, follower_id: str, followed_id: str) -> int:
    """A follow record: drop the app's follow caches and backfill the followed user's posts."""
    stores.cache.drop_follow_caches(follower_id, followed_id)
    return backfill(stores, follower_id, followed_id)


def apply_unfollow(stores: Stores, follower_id: str, followed_id: str) -> int:
    """An unfollow record: drop the app's follow caches and unmerge the author's posts."""
    stores.cache.drop_follow_caches(follower_id, followed_id)
    return unmerge(stores, follower_id, followed_id)


def backfill(stores: Stores, follower_id: str, followed_id: str, only_missing: bool = False) -> int:
    """Put ``followed_id``'s newest live posts into ``follower_id``'s feed (with
    ``only_missing``, those the durable feed lacks), and take out their posts there that are no
    longer live; returns how many were put in.

    The removal closes a race no other task can: a post delivered while the user followed, then
    deleted while they had unfollowed for a moment (its retraction's walk missed them), with
    the unfollow's unmerge running after the re-follow (so it stood down). Every write of a post
    is followed by a check that it is live, so any copy that survives was written before the
    delete, hence before the re-follow, hence before this task's read."""
    if not _follows(stores, follower_id, followed_id):
        return 0  # unfollowed since: the unfollow's own task owns the feed now
    posts = stores.table.recent_posts(followed_id, stores.settings.backfill_posts, stores.excluded)
    in_feed = posts_of(stores.table.feed_items_by_author(follower_id, followed_id))
    have = {p.post_id for p in in_feed} if only_missing else set()
    added = [p for p in posts if p.post_id not in have]
    add_posts(stores, follower_id, added)
    cached_only = _cached_only(stores, follower_id, followed_id, {p.post_id for p in in_feed})
    candidates = [p.post_id for p in in_feed] + [post_id for _, post_id in cached_only]
    live = stores.table.live_post_ids(candidates, stores.excluded) if candidates else set()
    dead = [p for p in in_feed if p.post_id not in live]
    remove_posts(stores, follower_id, dead)
    stores.cache.remove_entries((follower_id, score, post_id) for score, post_id in cached_only if post_id not in live)
    settle_follow(stores, follower_id, followed_id, present=posts, absent=dead)
    return len(added)


def recheck_follow(stores: Stores, follower_id: str, followed_id: str) -> int:
    """The follow's backfill again, once GSI1 shows everything written before the follow's task
    ran: a post whose fan-out walk missed the new edge is added, and a post deleted while the
    retraction's walk missed it is taken out (``backfill`` removes posts no longer live). Only
    what the feed lacks is written: the first backfill wrote the rest, and a re-check of every
    follow must not double what follows cost in write capacity."""
    return backfill(stores, follower_id, followed_id, only_missing=True)


def recheck_unfollow(stores: Stores, follower_id: str, followed_id: str) -> int:
    """The unfollow's unmerge again, once no planner can still be writing to the follower from a
    page of followers read before the unfollow (``tasks.follows``): a planner that wrote after
    the first unmerge and died before its settle is walked again without them (GSI1 no longer
    lists them), so nothing else would take the post out. Followed again since: what that
    planner wrote is due, unless the post is no longer live, which the follow's re-check
    takes out (``backfill``, durable and cached)."""
    if _follows(stores, follower_id, followed_id):
        recheck_follow(stores, follower_id, followed_id)
        return 0
    removed = unmerge(stores, follower_id, followed_id, count_cached=True)
    if removed:
        stores.metrics.crash_repairs.labels("unfollow_recheck").inc()
        log.warning("unfollow %s -> %s checked again: %d stale items taken out", follower_id, followed_id, removed)
    return removed


def _cached_only(stores: Stores, follower_id: str, followed_id: str, durable: set[str]) -> list[tuple[int, str]]:
    """The followed user's posts in the cached feed that no durable item names, as (score, post
    id). Only a crash leaves one that is no longer live: a planner that wrote a warm feed and
    died before anything settled that write, where no later walk lists the follower (they had
    unfollowed meanwhile) and the post was deleted since (``feeds.fanout``)."""
    return [(entry.score_ms, body["postId"]) for entry in stores.cache.members(follower_id)
            if (body := decode_member(entry.member)) is not None and body.get("authorId") == followed_id
            and body["postId"] not in durable]


def unmerge(stores: Stores, follower_id: str, followed_id: str, count_cached: bool = False) -> int:
    """Take every post of ``followed_id`` out of ``follower_id``'s feed; returns how many durable
    items (with ``count_cached``, cached members too)."""
    if _follows(stores, follower_id, followed_id):
        return 0  # followed again since: that follow's backfill owns the feed now
    # Stray cached members first; then exactly what the durable read finds, which settle
    # tracks: a re-follow's backfill landing after the read is left alone, one landing
    # before it is removed here and restored by settle.
    cached = stores.cache.remove_author(follower_id, followed_id)
    items = stores.table.feed_items_by_author(follower_id, followed_id)
    posts = posts_of(items)
    stores.table.delete_keys({"PK": {"S": i["PK"]}, "SK": {"S": i["SK"]}} for i in items)
    cached += stores.cache.remove_entries((follower_id, p.created_at_ms, p.post_id) for p in posts)
    settle_follow(stores, follower_id, followed_id, present=[], absent=posts)
    return len(items) + cached if count_cached else len(items)


def add_posts(stores: Stores, user_id: str, posts: Sequence[Post]) -> None:
    if posts:
        written = stores.table.put_items(item for p in posts for item in stores.format.items([user_id], p))
        entries = [stores.format.entry(p) for p in posts]
        warm = stores.cache.add_many_if_warm(user_id, entries)
        count_written(stores, written, len(entries) if warm else 0)


def remove_posts(stores: Stores, user_id: str, posts: Sequence[Post]) -> None:
    if posts:
        deleted = stores.table.delete_keys(feed_item_key(user_id, p) for p in posts)
        cached = stores.cache.remove_entries((user_id, p.created_at_ms, p.post_id) for p in posts)
        count_removed(stores, deleted, cached)


def settle_follow(
    stores: Stores, follower_id: str, followed_id: str, present: list[Post], absent: list[Post]
) -> None:
    """Settle one author's posts in one user's feed: due while they follow and it is live."""

    def due(posts: set[Post]) -> set[Post]:
        if not posts or not _follows(stores, follower_id, followed_id):
            return set()
        live = stores.table.live_post_ids([p.post_id for p in posts], stores.excluded)
        return {p for p in posts if p.post_id in live}

    settle(
        set(present),
        set(absent),
        due=due,
        remove=lambda posts: remove_posts(stores, follower_id, sorted(posts, key=_newest_first)),
        add=lambda posts: add_posts(stores, follower_id, sorted(posts, key=_newest_first)),
        what=f"follow {follower_id!r}->{followed_id!r}",
    )


def _newest_first(post: Post) -> tuple[int, str]:
    return (-post.created_at_ms, post.post_id)


def _follows(stores: Stores, follower_id: str, followed_id: str) -> bool:
    return bool(stores.table.current_followers([follower_id], followed_id))


def posts_of(items: Sequence[dict[str, Any]]) -> list[Post]:
    posts = []
    for item in items:
        try:
            posts.append(post_from_feed_item(item))
        except RecordError:
            continue  # an item feedpipe did not build: deleted above, never re-added
    return posts
