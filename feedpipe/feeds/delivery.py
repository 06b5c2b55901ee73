"""Putting one post into feeds and taking it out again, durable and cached, then settling."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TypeVar

from feedpipe.core.events import Post
from feedpipe.core.items import feed_item_key
from feedpipe.core.records import is_live
from feedpipe.feeds.stores import Stores

MAX_SETTLE_ROUNDS = 6
T = TypeVar("T")


class SettleError(Exception):
    """The truth kept changing under a task for too many rounds; the task retries later."""


def add_post(stores: Stores, post: Post, user_ids: Collection[str]) -> int:
    """Write ``post`` into each user's durable feed and each warm cached feed.

    The cache is written first, so readers see the post without waiting for DynamoDB, and
    again after the durable write: a cache rebuild relies on every cache write having one that
    follows the durable write (the second ZADD of the same member changes nothing otherwise)."""
    if not user_ids:
        return 0
    entry = stores.format.entry(post)
    warm = stores.cache.add_to_warm_feeds(user_ids, entry)
    written = stores.table.put_items(stores.format.items(user_ids, post))
    stores.cache.add_to_warm_feeds(user_ids, entry)
    count_written(stores, written, warm)
    return written


def remove_post(stores: Stores, post: Post, user_ids: Collection[str]) -> None:
    if user_ids:
        deleted = stores.table.delete_keys(feed_item_key(u, post) for u in user_ids)
        cached = stores.cache.remove_post(user_ids, post.created_at_ms, post.post_id)
        count_removed(stores, deleted, cached)


def count_written(stores: Stores, durable: int, cached: int) -> None:
    stores.metrics.feed_items_written.labels("dynamodb").inc(durable)
    stores.metrics.feed_items_written.labels("redis").inc(cached)


def count_removed(stores: Stores, durable: int, cached: int) -> None:
    stores.metrics.feed_items_removed.labels("dynamodb").inc(durable)
    stores.metrics.feed_items_removed.labels("redis").inc(cached)


def post_is_live(stores: Stores, post_id: str) -> bool:
    image = stores.table.post_image(post_id)
    return image is not None and is_live(image, stores.excluded)


def due_users(stores: Stores, post: Post, candidates: Collection[str]) -> set[str]:
    """Which candidates should have ``post`` in their feed now: it is live and they follow."""
    if not candidates or not post_is_live(stores, post.post_id):
        return set()
    return stores.table.current_followers(candidates, post.author_id)


def settle(
    present: set[T],
    absent: set[T],
    due: Callable[[set[T]], set[T]],
    remove: Callable[[set[T]], object],
    add: Callable[[set[T]], object],
    what: str,
) -> None:
    """After an operation put ``present`` into feeds and took ``absent`` out, ask the truth which
    of them are ``due`` and fix what disagrees, until a check after the last action agrees."""
    for _ in range(MAX_SETTLE_ROUNDS):
        now_due = due(present | absent)
        wrongly_present, wrongly_absent = present - now_due, absent & now_due
        if not wrongly_present and not wrongly_absent:
            return
        if wrongly_present:
            remove(wrongly_present)
        if wrongly_absent:
            add(wrongly_absent)
        present, absent = wrongly_absent, wrongly_present
    raise SettleError(f"{what} kept changing for {MAX_SETTLE_ROUNDS} rounds")


def settle_post(stores: Stores, post: Post, present: set[str], absent: set[str]) -> None:
    """Settle one post across many users' feeds."""
    settle(
        present,
        absent,
        due=lambda users: due_users(stores, post, users),
        remove=lambda users: remove_post(stores, post, users),
        add=lambda users: add_post(stores, post, users),
        what=f"post {post.post_id!r}",
    )
