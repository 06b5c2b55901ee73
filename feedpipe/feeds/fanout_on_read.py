"""Fan-out-on-read: a huge author's post goes into one per-author list that readers merge,
instead of into every follower's feed.

An author is huge once a fan-out finds their ``followers_count`` at or above
``fanout_on_read_followers`` (0: off); the promotion is durable and sticky (see
``adapters/huge_authors``). The author's list holds their newest live posts, at most
``feed_max_length``. It is a cache of the table's own truth (the author's posts on GSI1), so a
missing list is rebuilt whole, never recreated partial. Like every feed rule here, each change
is followed by a strongly consistent re-check of the posts it touched (``settle``), so a delete
racing a publish, or a rebuild reading a stale GSI, ends with the list agreeing with the table.
"""

from __future__ import annotations

from collections.abc import Collection

from feedpipe.core.entries import CacheEntry
from feedpipe.core.events import Post
from feedpipe.feeds.delivery import settle
from feedpipe.feeds.stores import Stores


def is_huge(stores: Stores, author_id: str) -> bool:
    """Whether ``author_id``'s posts are served by fan-out-on-read; promotes the author when the
    profile's count has reached the threshold. Always False while the feature is off."""
    threshold = stores.settings.fanout_on_read_followers
    if not threshold:
        return False
    if author_id in huge_among(stores, [author_id]):
        return True
    count = stores.huge_authors.followers_count(author_id)
    if count < threshold:
        return False
    promote(stores, author_id, count)
    return True


def huge_among(stores: Stores, user_ids: Collection[str]) -> list[str]:
    """Which of ``user_ids`` are huge authors, loading the Redis set from the table if missing."""
    ids = list(user_ids)
    found = stores.author_posts.huge_among(ids)
    if found is None:
        stores.author_posts.load_huge(stores.huge_authors.registered())
        found = stores.author_posts.huge_among(ids) or []
    return found


def promote(stores: Stores, author_id: str, followers_count: int) -> None:
    """Durably first, so any later load of the Redis set includes the author; then the set. A
    set missing here is loaded whole again (a load that read the table before this write may
    have recreated it since: loads are unions, so reloading after the write is always right)."""
    stores.huge_authors.register(author_id, followers_count)
    if not stores.author_posts.add_huge_if_loaded(author_id):
        stores.author_posts.load_huge(stores.huge_authors.registered())


def publish(stores: Stores, post: Post) -> None:
    """Put a live post of a huge author into the author's list, then settle it."""
    added = put_posts(stores, post.author_id, [post])
    settle_author_posts(stores, post.author_id, present=added, absent=set())
    stores.metrics.fanout_on_read_posts.inc()


def retract(stores: Stores, post: Post) -> None:
    """Take a dead post out of its author's list. Runs for every retraction: the author may
    have been huge when it was published. Nothing removed means nothing to settle."""
    if stores.author_posts.remove_posts(post.author_id, [(post.created_at_ms, post.post_id)]):
        settle_author_posts(stores, post.author_id, present=set(), absent={post})


def put_posts(stores: Stores, author_id: str, posts: Collection[Post]) -> set[Post]:
    """Add ``posts`` to the author's list; a missing list is first rebuilt from the author's
    newest live posts (GSI1). Returns every post written."""
    if posts and stores.author_posts.add_if_present(author_id, _entries(stores, posts)):
        return set(posts)
    return _rebuild(stores, author_id, posts)


def rebuild_author_posts(stores: Stores, author_id: str) -> None:
    """Refill a missing list (a reader found it gone) and settle what the GSI read gave."""
    settle_author_posts(stores, author_id, present=_rebuild(stores, author_id, []), absent=set())


def _rebuild(stores: Stores, author_id: str, posts: Collection[Post]) -> set[Post]:
    limit = stores.settings.feed_max_length
    rebuilt = {p.post_id: p for p in stores.table.recent_posts(author_id, limit, stores.excluded)}
    rebuilt.update((p.post_id, p) for p in posts)
    stores.author_posts.add_many(author_id, _entries(stores, rebuilt.values()))
    stores.metrics.author_posts_rebuilds.inc()
    return set(rebuilt.values())


def settle_author_posts(stores: Stores, author_id: str, present: set[Post], absent: set[Post]) -> None:
    """A post is due in its author's list while it is live."""

    def due(posts: set[Post]) -> set[Post]:
        live = stores.table.live_post_ids([p.post_id for p in posts], stores.excluded) if posts else set()
        return {p for p in posts if p.post_id in live}

    def add(posts: set[Post]) -> None:
        extra = put_posts(stores, author_id, posts) - posts
        if extra:  # the list had gone and was rebuilt from a GSI read: settle that too
            settle_author_posts(stores, author_id, present=extra, absent=set())

    settle(
        present,
        absent,
        due=due,
        remove=lambda posts: stores.author_posts.remove_posts(
            author_id, [(p.created_at_ms, p.post_id) for p in posts]
        ),
        add=add,
        what=f"author list {author_id!r}",
    )


def _entries(stores: Stores, posts: Collection[Post]) -> list[CacheEntry]:
    return [stores.format.entry(p) for p in sorted(posts, key=lambda p: -p.created_at_ms)]
