"""Reading a home feed with fan-out-on-read: the user's own feed merged with the lists of the
huge authors they follow, newest first, each post once. README "Huge accounts" shows the same
few lines for the app's ``getFeed``.

The user's own feed keeps its warm/cold meaning: a warm ``feed:{user}`` is read, a cold one is
not recreated here (the durable feed is read instead, as the app does on a miss). A huge
author's list that is missing is rebuilt from the table, so a Redis restart loses nothing.
Reads go no deeper than ``feed_max_length`` (the cap on every list).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from feedpipe.core.merging import Source, merge_feeds
from feedpipe.feeds import fanout_on_read
from feedpipe.feeds.rebuild import newest_entries
from feedpipe.feeds.stores import Stores

DEFAULT_LIMIT = 20  # the seed's getFeed


def read_feed(
    stores: Stores, user_id: str, limit: int = DEFAULT_LIMIT, following: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` posts of ``user_id``'s home feed, as decoded members. ``following``
    is who the user follows, when the caller has it (else it is read from the table)."""
    if limit < 1:
        return []
    authors = huge_followed(stores, user_id, following)
    return merge_feeds([own_feed(stores, user_id, limit), *author_lists(stores, authors, limit)], limit)


def huge_followed(stores: Stores, user_id: str, following: Iterable[str] | None = None) -> list[str]:
    """The huge authors ``user_id`` follows: one set lookup for all their followees."""
    followees = sorted(set(following)) if following is not None else stores.table.followees(user_id)
    return fanout_on_read.huge_among(stores, followees) if followees else []


def own_feed(stores: Stores, user_id: str, limit: int) -> Source:
    """The warm cached feed, else the durable one (never warming a cold user)."""
    return stores.cache.members(user_id, limit) or newest_entries(stores, user_id, limit)


def author_lists(stores: Stores, authors: list[str], limit: int) -> list[Source]:
    """Each author's newest ``limit`` posts, one round trip; missing lists rebuilt first."""
    if not authors:
        return []
    found = stores.author_posts.newest(authors, limit)
    missing = [a for a, entries in found.items() if not entries]
    for author in missing:
        fanout_on_read.rebuild_author_posts(stores, author)
    if missing:
        found.update(stores.author_posts.newest(missing, limit))
    return list(found.values())
