"""The feed rules' storage in memory: the app's table, and (``feeds.memory_cache``) its Redis.

What the rules rely on, and nothing more: items keyed by (PK, SK) as DynamoDB keeps them,
followers read in GSI1 order a page at a time with the key a page ended at, an author's posts
newest first, every read strongly consistent. The contract test
(``tests/adapters/test_store_contract.py``) runs the same assertions here and on moto, so the
two cannot drift. For tests and dry runs; nothing here persists.

The app's side writes plain items (``put_image``, ``update_image``, ``delete_image``), as
``from_image`` reads them back; feedpipe's feed items arrive in DynamoDB's wire form, as the
real table receives them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from decimal import Decimal
from typing import Any

from feedpipe.config import Settings
from feedpipe.core import keys
from feedpipe.core.attributes import from_image
from feedpipe.core.events import Post
from feedpipe.core.follower_segments import Segment
from feedpipe.core.items import Item, Key
from feedpipe.core.records import RecordError, is_live, post_from_image
from feedpipe.core.segments import Cursor, SegmentProgress
from feedpipe.core.timestamps import now_timestamp
from feedpipe.feeds.memory_cache import MemoryAuthorLists, MemoryCache, MemoryCursors
from feedpipe.feeds.stores import Stores, feed_format
from feedpipe.metrics import Metrics, noop_metrics

Image = dict[str, Any]
Ident = tuple[str, str]


def _ident(key: Key) -> Ident:
    return key["PK"]["S"], key["SK"]["S"]


def _wire_key(pk: str, sk: str) -> Key:
    return {"PK": {"S": pk}, "SK": {"S": sk}}


class MemoryTable:
    """``PostsAndFollows`` and ``DurableFeeds`` over one dict of items."""

    def __init__(self) -> None:
        self.items: dict[Ident, Image] = {}

    # -- the app's writes ----------------------------------------------------------------------

    def put_image(self, image: Image) -> None:
        self.items[(image["PK"], image["SK"])] = dict(image)

    def update_image(self, pk: str, sk: str, **changes: Any) -> None:
        self.items[(pk, sk)].update(changes)

    def delete_image(self, pk: str, sk: str) -> None:
        self.items.pop((pk, sk), None)

    # -- reads of the truth ----------------------------------------------------------------------

    def _gsi1(self, user_id: str, prefix: str, newest_first: bool = False) -> list[Image]:
        pk = keys.user_pk(user_id)
        found = [i for i in self.items.values()
                 if i.get("GSI1PK") == pk and str(i.get("GSI1SK", "")).startswith(prefix)]
        return sorted(found, key=lambda i: (i["GSI1SK"], i["PK"], i["SK"]), reverse=newest_first)

    def follower_pages_from(
        self, author_id: str, page_size: int | None = None, start: Key | None = None, segment: Segment | None = None
    ) -> Iterator[tuple[list[str], Key | None]]:
        rows = self._followers(author_id, segment)
        if start:
            after = (start["GSI1SK"]["S"], start["PK"]["S"], start["SK"]["S"])
            rows = [r for r in rows if (r["GSI1SK"], r["PK"], r["SK"]) > after]
        size = page_size or max(len(rows), 1)
        for at in range(0, max(len(rows), 1), size):
            page = rows[at : at + size]
            more = at + size < len(rows)
            last = {**_wire_key(page[-1]["PK"], page[-1]["SK"]), "GSI1PK": {"S": page[-1]["GSI1PK"]},
                    "GSI1SK": {"S": page[-1]["GSI1SK"]}} if more else None
            ids = [keys.strip_prefix(r["GSI1SK"], keys.FOLLOWER_PREFIX) for r in page]
            yield [i for i in ids if i], last

    def last_follower(self, author_id: str, segment: Segment | None = None) -> str | None:
        rows = self._followers(author_id, segment)
        return keys.strip_prefix(rows[-1]["GSI1SK"], keys.FOLLOWER_PREFIX) if rows else None

    def _followers(self, author_id: str, segment: Segment | None) -> list[Image]:
        rows = self._gsi1(author_id, keys.FOLLOWER_PREFIX)
        if segment is None:
            return rows
        lo, hi = keys.follower_gsi1sk(segment.lo), keys.follower_range_gsi1sk(segment.hi)
        return [r for r in rows if lo <= r["GSI1SK"] < hi]

    def recent_posts(self, author_id: str, limit: int, excluded: Collection[str]) -> list[Post]:
        posts: list[Post] = []
        for image in self._gsi1(author_id, keys.POST_PREFIX, newest_first=True) if limit > 0 else ():
            if is_live(image, excluded):
                try:
                    posts.append(post_from_image(image))
                except RecordError:
                    continue
            if len(posts) >= limit:
                break
        return posts

    def newest_post_images(self, author_id: str, limit: int) -> list[Image]:
        return [dict(i) for i in self._gsi1(author_id, keys.POST_PREFIX, newest_first=True)[: max(limit, 0)]]

    def post_image(self, post_id: str) -> Image | None:
        image = self.items.get((keys.post_pk(post_id), keys.POST_SK))
        return None if image is None else dict(image)

    def post_images(self, post_ids: Iterable[str]) -> dict[str, Image]:
        found = (self.post_image(p) for p in set(post_ids))
        return {str(i.get("post_id") or keys.strip_prefix(i["PK"], keys.POST_PREFIX)): i for i in found if i}

    def live_post_ids(self, post_ids: Iterable[str], excluded: Collection[str]) -> set[str]:
        return {p for p, image in self.post_images(post_ids).items() if is_live(image, excluded)}

    def current_followers(self, follower_ids: Iterable[str], followed_id: str) -> set[str]:
        sk = keys.following_sk(followed_id)
        return {f for f in set(follower_ids) if (keys.user_pk(f), sk) in self.items}

    def followees(self, user_id: str) -> list[str]:
        pk = keys.user_pk(user_id)
        sks = sorted(sk for p, sk in self.items if p == pk and sk.startswith(keys.FOLLOWING_PREFIX))
        ids = (keys.strip_prefix(sk, keys.FOLLOWING_PREFIX) for sk in sks)
        return [i for i in ids if i]

    def user_page(
        self, segment: int, total_segments: int, start: Key | None, page_items: int
    ) -> tuple[list[str], Key | None]:
        """Segment ``segment`` holds every ``total_segments``-th user in key order."""
        pks = sorted(pk for pk, sk in self.items if sk == keys.PROFILE_SK and pk.startswith(keys.USER_PREFIX))
        pks = [pk for n, pk in enumerate(pks) if n % total_segments == segment]
        if start:
            pks = [pk for pk in pks if pk > start["PK"]["S"]]
        page, more = pks[:page_items], len(pks) > page_items
        ids = [keys.strip_prefix(pk, keys.USER_PREFIX) or "" for pk in page]
        return ids, _wire_key(page[-1], keys.PROFILE_SK) if more else None

    # -- durable feeds ---------------------------------------------------------------------------

    def _feed(self, user_id: str) -> list[Image]:
        pk = keys.feed_pk(user_id)
        return [self.items[(pk, sk)] for sk in sorted(sk for p, sk in self.items if p == pk)]

    def feed_items(self, user_id: str, limit: int | None = None) -> list[Image]:
        newest = [dict(i) for i in reversed(self._feed(user_id))]
        return newest[:limit] if limit else newest

    def feed_items_by_author(self, user_id: str, author_id: str) -> list[Image]:
        return [dict(i) for i in self._feed(user_id) if i.get("author_id") == author_id]

    def feed_key_pages(self, user_id: str) -> Iterator[list[Key]]:
        yield [_wire_key(i["PK"], i["SK"]) for i in reversed(self._feed(user_id))]

    def feed_owners_page(self, cursor: Key | None, max_pages: int, page_size: int) -> tuple[list[str], Key | None]:
        """The table read in key order, ``page_size`` items a page, as a Scan reads it."""
        idents = sorted(self.items)
        if cursor:
            idents = [i for i in idents if i > _ident(cursor)]
        read = idents[: max(max_pages, 1) * page_size]
        owners = dict.fromkeys(keys.strip_prefix(pk, keys.FEED_PREFIX) or "" for pk, _ in read)
        more = len(idents) > len(read)
        return [o for o in owners if o], _wire_key(*read[-1]) if more else None

    def put_items(self, items: Iterable[Item]) -> int:
        written = {_ident(i): from_image(i) for i in items}
        self.items.update(written)
        return len(written)

    def delete_keys(self, item_keys: Iterable[Key]) -> int:
        idents = {_ident(k) for k in item_keys}
        for ident in idents:
            self.items.pop(ident, None)
        return len(idents)


class MemoryHugeAuthors:
    """``HugeAuthors`` over the table's profiles and ``FANOUT_ON_READ`` items."""

    def __init__(self, table: MemoryTable) -> None:
        self.table = table

    def followers_count(self, author_id: str) -> int:
        profile = self.table.items.get((keys.user_pk(author_id), keys.PROFILE_SK), {})
        try:
            return int(Decimal(str(profile["followers_count"]))) if "followers_count" in profile else 0
        except (ArithmeticError, ValueError):
            return 0

    def register(self, author_id: str, followers_count: int) -> None:
        self.table.put_image({
            "PK": keys.FANOUT_ON_READ_PK, "SK": keys.huge_author_sk(author_id), "author_id": author_id,
            "followers_count": followers_count, "registered_at": now_timestamp(),
        })

    def registered(self) -> list[str]:
        sks = sorted(sk for pk, sk in self.table.items if pk == keys.FANOUT_ON_READ_PK)
        ids = (keys.strip_prefix(sk, keys.AUTHOR_PREFIX) for sk in sks)
        return [i for i in ids if i]


class MemoryBackfillSegments:
    """``BackfillSegments``: each segment's progress, moved only from the version read."""

    def __init__(self) -> None:
        self.segments: dict[tuple[int, int], SegmentProgress] = {}

    def start(self, total: int) -> list[SegmentProgress]:
        for segment in range(total):
            self.segments.setdefault((total, segment), SegmentProgress(total, segment))
        return self.all(total)

    def all(self, total: int) -> list[SegmentProgress]:
        return [self.get(total, segment) for segment in range(total)]

    def get(self, total: int, segment: int) -> SegmentProgress:
        return self.segments.get((total, segment)) or SegmentProgress(total, segment)

    def advance(self, seen: SegmentProgress, resume: Cursor | None, users: int) -> SegmentProgress | None:
        current = self.segments.get((seen.total, seen.segment))
        if current is None or current.version != seen.version:  # a conditional update's miss
            return None
        moved = self.segments[(seen.total, seen.segment)] = seen.advanced(resume, users)
        return moved

    def clear(self, total: int) -> None:
        for segment in range(total):
            self.segments.pop((total, segment), None)


def memory_stores(
    settings: Settings, metrics: Metrics | None = None, dead_letters: Any = None, regen_queue: Any = None
) -> Stores:
    """``Stores`` on in-memory parts. Dead letters and the regen queue are no feed-rule storage:
    pass real ones where a test needs them."""
    table = MemoryTable()
    return Stores(
        table=table,
        cache=MemoryCache(settings.feed_max_length, settings.feed_ttl_seconds, settings.key_prefix),
        dead_letters=dead_letters,
        settings=settings,
        regen_queue=regen_queue,
        metrics=metrics or noop_metrics(),
        author_posts=MemoryAuthorLists(settings.feed_max_length, settings.author_posts_ttl_seconds),
        huge_authors=MemoryHugeAuthors(table),
        cursors=MemoryCursors(),
        backfill_progress=MemoryBackfillSegments(),
        format=feed_format(settings),
    )
