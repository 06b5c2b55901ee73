"""Anti-entropy: one user's durable and cached feed compared with what the feed rules make of
the table now.

The rules say when a post *must* be in a feed and when it *must not*; between the two a post
may legitimately be there or not (a followee's post older than their newest
``backfill_posts`` that was published before the follow, or one the durable trim cut), and the
audit judges nothing there. So:

- **missing** (durable): a live post among a followee's newest ``backfill_posts`` (deleted
  and hidden ones counted, so a delete does not widen the window), within the
  newest ``durable_feed_max_items`` of the feed as the rules make it, and within the item TTL
  when one is set; or a live post of a followee that the cached feed holds and the durable one
  lost (unless, with item expiry on, it is older than the TTL: its item may have expired while
  the cache still holds the post). **missing** (cached): a post of the expected cache (the
  newest ``feed_max_length`` of the durable feed as the rules make it) newer than the cache's
  oldest member, absent from it (a retraction shortens a cache without refilling it, so what
  is older is not judged). A warm user's empty cache is what retractions leave (the warm
  marker keeps them warm, contract section 3), so only a post newer than the cache's last write
  is judged there: fan-out adding it would have written the feed and refreshed the marker's
  TTL, which dates that write.
- **extra**: an item or member whose author is not followed, whose post is deleted, hidden or
  gone, or which is not a feed item or member at all; in the cache also a post older than the
  expected cache's newest ``feed_max_length``.
- **stale**: the right post in a form the rules no longer build (another key, other immutable
  fields, a member that is not canonical, a wrong score).
- **over_long**: more items than the cap (``durable_feed_max_items`` is applied by the hourly
  sweep, so a busy durable feed is over it between sweeps), more members than ``feed_max_length``.
- **missing_ttl**: a cached feed or warm marker with no TTL; durable items with no ``ttl`` when
  item expiry is on.

A user is warm while their feed key or their warm marker exists; a cold user's cache is not
judged (fan-out does not write it).

A live system changes under the audit, so drift seen once is looked at again and only what is
seen both times is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from feedpipe.core import keys
from feedpipe.core.entries import CacheEntry
from feedpipe.core.events import Post
from feedpipe.core.records import RecordError, is_live, post_from_feed_item, post_from_image
from feedpipe.feeds.fanout_on_read import huge_among
from feedpipe.feeds.stores import Stores

MISSING, EXTRA, STALE, OVER_LONG, MISSING_TTL = "missing", "extra", "stale", "over_long", "missing_ttl"
KINDS = (MISSING, EXTRA, STALE, OVER_LONG, MISSING_TTL)
DURABLE, CACHED = "dynamodb", "redis"
STORES = (DURABLE, CACHED)
NO_KEY = -2  # Redis TTL of a key that does not exist


@dataclass(frozen=True)
class Drift:
    """One way a feed differs from the rules; ``post`` is the post as it should be, when known."""

    kind: str
    store: str
    ref: str  # a post id, a durable SK or a cached member: what is wrong
    count: int = 1
    post: Post | None = field(default=None, compare=False)
    key: dict[str, Any] | None = field(default=None, compare=False)  # the durable item's key

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "store": self.store, "ref": self.ref, "count": self.count}


@dataclass
class Snapshot:
    """What one audit pass read: the truth from the table, the feeds as they are."""

    followees: set[str]
    items: list[dict[str, Any]]
    images: dict[str, dict[str, Any]]
    required: list[Post]
    cached: list[CacheEntry]  # newest first
    cache_ttl: int
    marker_ttl: int

    @property
    def warm(self) -> bool:
        return self.cache_ttl != NO_KEY or self.marker_ttl != NO_KEY


def read_snapshot(stores: Stores, user_id: str) -> Snapshot:
    """Reads: the follows (one Query), the durable feed (a Query, a page per 1 MB), its posts
    (one BatchGetItem per 100), one GSI1 Query per followee, and one Redis round trip."""
    cached, ttl, marker_ttl = stores.cache.members_with_ttl(user_id)
    followees = set(stores.table.followees(user_id))
    items = stores.table.feed_items(user_id)
    wanted = {str(i.get("post_id")) for i in items if isinstance(i.get("post_id"), str)}
    wanted |= {pid for pid in (_member_post_id(e.member) for e in cached) if pid}
    images = stores.table.post_images(wanted)
    # A huge author's new posts go to their own list, not to followers' feeds: only what the
    # follow backfilled is in the feed, so nothing of theirs is judged missing.
    huge = set(huge_among(stores, followees)) if stores.settings.fanout_on_read_followers else set()
    required = [p for a in sorted(followees - huge) for p in _window(stores, a)]
    return Snapshot(followees, items, images, _within_item_ttl(stores, required), cached, ttl, marker_ttl)


def _window(stores: Stores, author_id: str) -> list[Post]:
    """The live posts among the author's newest ``backfill_posts``, dead ones counted: a delete
    does not pull an older post into the window (nothing backfills it), a new post does (its
    fan-out delivered it)."""
    posts = []
    for image in stores.table.newest_post_images(author_id, stores.settings.backfill_posts):
        if is_live(image, stores.excluded):
            try:
                posts.append(post_from_image(image))
            except RecordError:
                continue  # never enters a feed
    return posts


def find_drift(stores: Stores, user_id: str) -> list[Drift]:
    """Drift seen in two passes a moment apart (one pass when the first finds none)."""
    first = _drift_of(stores, read_snapshot(stores, user_id))
    if not first:
        return []
    again = set(_drift_of(stores, read_snapshot(stores, user_id)))
    return [d for d in first if d in again]


def _drift_of(stores: Stores, snap: Snapshot) -> list[Drift]:
    drift, legit = durable_drift(stores, snap)
    truth = _truth(stores, legit, snap)
    unexpired = {p.post_id for p in _within_item_ttl(stores, truth)}
    drift += [Drift(MISSING, DURABLE, p.post_id, post=p) for p in truth
              if p.post_id not in legit and p.post_id in unexpired]
    return drift + cache_drift(stores, snap, truth)


def durable_drift(stores: Stores, snap: Snapshot) -> tuple[list[Drift], dict[str, Post]]:
    """Drift of the durable items, and the posts they rightly hold (in their current form)."""
    drift: list[Drift] = []
    legit: dict[str, Post] = {}
    need_ttl = bool(stores.settings.durable_feed_ttl_days)
    for item in snap.items:
        key = {"PK": {"S": item["PK"]}, "SK": {"S": item["SK"]}}
        current = _current(stores, snap, item.get("post_id"))
        try:
            held = post_from_feed_item(item)
        except RecordError:
            drift.append(Drift(EXTRA, DURABLE, item["SK"], key=key))
            continue
        if current is None or held.author_id not in snap.followees or current.author_id != held.author_id:
            drift.append(Drift(EXTRA, DURABLE, item["SK"], post=held, key=key))
        elif item["SK"] != keys.feed_sk(current.created_at, current.post_id) or _is_stale(stores, held, current):
            drift.append(Drift(STALE, DURABLE, item["SK"], post=current, key=key))
            legit[current.post_id] = current
        else:
            if need_ttl and "ttl" not in item:
                drift.append(Drift(MISSING_TTL, DURABLE, item["SK"], post=current, key=key))
            legit[current.post_id] = current
    cap = stores.settings.durable_feed_max_items
    if cap and len(snap.items) > cap:
        drift.append(Drift(OVER_LONG, DURABLE, f"{len(snap.items)} items", count=len(snap.items) - cap))
    return drift, legit


def _truth(stores: Stores, legit: dict[str, Post], snap: Snapshot) -> list[Post]:
    """The durable feed as the rules make it, newest first: what it rightly holds, what it must
    hold, and live posts of followees that only the cache still holds; capped by the trim."""
    posts = dict(legit)
    for post in snap.required:
        posts.setdefault(post.post_id, post)
    for entry in snap.cached:
        current = _current(stores, snap, _member_post_id(entry.member))
        if current is not None and current.author_id in snap.followees:
            posts.setdefault(current.post_id, current)
    ordered = sorted(posts.values(), key=lambda p: keys.feed_sk(p.created_at, p.post_id), reverse=True)
    cap = stores.settings.durable_feed_max_items
    return ordered[:cap] if cap else ordered


def cache_drift(stores: Stores, snap: Snapshot, truth: list[Post]) -> list[Drift]:
    if not snap.warm:
        return []  # a cold user: fan-out does not write their feed
    limit = stores.settings.feed_max_length
    expected = {stores.format.member(p): p for p in truth[:limit]}
    expected_ids = {p.post_id: p for p in expected.values()}
    older = {p.post_id for p in truth[limit:]}
    drift: list[Drift] = []
    for rank, entry in enumerate(snap.cached):
        member = entry.member
        post = expected.get(member)
        if post is not None:
            if entry.score_ms != post.created_at_ms:
                drift.append(Drift(STALE, CACHED, member, post=post))
            continue
        post_id = _member_post_id(member)
        if post_id in expected_ids:
            drift.append(Drift(STALE, CACHED, member, post=expected_ids[post_id]))
        elif rank >= limit and post_id in older:
            continue  # counted once below, as over_long
        else:
            drift.append(Drift(EXTRA, CACHED, member))
    held = {_member_post_id(e.member) for e in snap.cached}
    oldest = snap.cached[-1].score_ms if snap.cached else _last_write_ms(stores, snap)
    for post in expected.values():
        if post.post_id not in held and post.created_at_ms > oldest:
            drift.append(Drift(MISSING, CACHED, post.post_id, post=post))
    if len(snap.cached) > limit:
        drift.append(Drift(OVER_LONG, CACHED, f"{len(snap.cached)} members", count=len(snap.cached) - limit))
    if snap.cache_ttl == -1:
        drift.append(Drift(MISSING_TTL, CACHED, "ttl"))
    if snap.marker_ttl == -1:
        drift.append(Drift(MISSING_TTL, CACHED, "warm marker ttl"))
    return drift


def _last_write_ms(stores: Stores, snap: Snapshot) -> float:
    """The latest time an empty warm cache can have been written (fan-out and rebuilds set the
    marker's TTL in full); infinite when the marker has no TTL to tell (then reported as such)."""
    if snap.marker_ttl < 0:
        return float("inf")
    elapsed = stores.settings.feed_ttl_seconds - snap.marker_ttl - 1  # TTLs are whole seconds, rounded down
    return datetime.now(UTC).timestamp() * 1000 - max(0, elapsed) * 1000


def _current(stores: Stores, snap: Snapshot, post_id: Any) -> Post | None:
    """The post as fan-out would write it now; None when it is gone, dead or unreadable."""
    image = snap.images.get(post_id) if isinstance(post_id, str) else None
    if image is None or not is_live(image, stores.excluded):
        return None
    try:
        return post_from_image(image)
    except RecordError:
        return None


def _is_stale(stores: Stores, held: Post, current: Post) -> bool:
    return stores.format.member(held) != stores.format.member(current)


def _member_post_id(member: str) -> str | None:
    try:
        doc = json.loads(member)
    except ValueError:
        return None
    post_id = doc.get("postId") if isinstance(doc, dict) else None
    return post_id if isinstance(post_id, str) else None


def _within_item_ttl(stores: Stores, posts: list[Post]) -> list[Post]:
    """With item expiry on, posts older than the TTL may have expired out: not required."""
    days = stores.settings.durable_feed_ttl_days
    if not days:
        return posts
    since = int((datetime.now(UTC) - timedelta(days=days)).timestamp() * 1000)
    return [p for p in posts if p.created_at_ms >= since]
