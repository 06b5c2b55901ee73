"""Rebuilding a cached feed from the durable one (the source the app's cache is rebuilt from)."""

from __future__ import annotations

from feedpipe.core.records import RecordError, post_from_feed_item
from feedpipe.feeds.stores import Stores


def rebuild_cache(stores: Stores, user_id: str) -> int:
    """Replace ``feed:{user_id}`` with the newest ``feed_max_length`` durable items, atomically.
    Returns the number of members now cached."""
    entries = []
    for item in stores.table.feed_items(user_id, limit=stores.settings.feed_max_length):
        try:
            post = post_from_feed_item(item)
        except RecordError:
            continue
        entries.append((post.created_at_ms, stores.member(post)))
    return stores.cache.replace_feed(user_id, entries)
