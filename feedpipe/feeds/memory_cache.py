"""The app's cache Redis in memory: what the Lua scripts of ``adapters.redis_feeds`` and
``adapters.author_posts`` do, step for step, with TTLs on an injectable clock.

A user is warm while their feed or their warm marker exists (CONTRACT section 3); Redis keeps
no empty sorted set, so neither does this. Sorted sets order by (score, member), as Redis does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from feedpipe.core import keys
from feedpipe.core.entries import CacheEntry
from feedpipe.core.keys import WALK_START, OwnKeys

NO_KEY, NO_TTL = -2, -1  # Redis' PTTL/TTL of a missing key, of a key without expiry

Clock = Callable[[], float]  # seconds


@dataclass
class _Keyspace:
    """Keys with optional deadlines; a key past its deadline is gone, as Redis expires it."""

    clock: Clock
    zsets: dict[str, dict[str, float]] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)
    deadlines: dict[str, float] = field(default_factory=dict)

    def exists(self, key: str) -> bool:
        deadline = self.deadlines.get(key)
        if deadline is not None and deadline <= self.clock():
            self.delete(key)
        return key in self.zsets or key in self.strings

    def delete(self, key: str) -> None:
        self.zsets.pop(key, None)
        self.strings.pop(key, None)
        self.deadlines.pop(key, None)

    def pttl(self, key: str) -> int:
        if not self.exists(key):
            return NO_KEY
        deadline = self.deadlines.get(key)
        return NO_TTL if deadline is None else max(int(round((deadline - self.clock()) * 1000)), 0)

    def ttl(self, key: str) -> int:
        ms = self.pttl(key)
        return ms if ms < 0 else (ms + 500) // 1000

    def pexpire(self, key: str, ms: int) -> None:
        if self.exists(key):
            self.deadlines[key] = self.clock() + ms / 1000

    def set(self, key: str, value: str, ms: int | None = None, nx: bool = False) -> None:
        if nx and self.exists(key):
            return
        self.delete(key)
        self.strings[key] = value
        if ms is not None:
            self.deadlines[key] = self.clock() + ms / 1000

    def zset(self, key: str) -> dict[str, float]:
        return self.zsets.get(key, {}) if self.exists(key) else {}  # a string is no sorted set

    def zadd(self, key: str, entries: Iterable[CacheEntry]) -> None:
        exists = self.exists(key)
        zset = self.zsets.setdefault(key, {})
        zset.update((e.member, float(e.score_ms)) for e in entries)
        if not zset:
            self.zsets.pop(key)
        elif not exists:
            self.deadlines.pop(key, None)

    def zrem(self, key: str, members: Iterable[str]) -> int:
        zset = self.zset(key)
        removed = sum(zset.pop(m, None) is not None for m in list(members))
        if key in self.zsets and not zset:
            self.delete(key)
        return removed

    def ranked(self, key: str) -> list[tuple[str, float]]:
        """Lowest first, as ZRANGE."""
        return sorted(self.zset(key).items(), key=lambda pair: (pair[1], pair[0]))

    def trim(self, key: str, max_length: int) -> None:
        """ZREMRANGEBYRANK key 0 -(max_length + 1): keep the highest ``max_length``."""
        ranked = self.ranked(key)
        self.zrem(key, [m for m, _ in ranked[: max(len(ranked) - max_length, 0)]])


def _field(member: str, name: str) -> object:
    try:
        doc = json.loads(member)
    except ValueError:
        return None
    return doc.get(name) if isinstance(doc, dict) else None


def _add_if_present(space: _Keyspace, key: str, marker: str | None, max_length: int, ttl: int,
                    entries: Sequence[CacheEntry]) -> int:
    """ADD_IF_WARM."""
    if not space.exists(key) and (marker is None or not space.exists(marker)):
        return 0
    space.zadd(key, entries)
    space.trim(key, max_length)
    space.pexpire(key, ttl * 1000)
    if marker is not None:
        space.set(marker, "1", ttl * 1000)
    return 1


def _remove_matching(space: _Keyspace, key: str, marker: str | None, match: Callable[[str, float], bool]) -> int:
    """REMOVE_POST / REMOVE_AUTHOR, then KEEP_WARM: a feed emptied here leaves its marker for
    the rest of the feed's TTL."""
    ttl = space.pttl(key)
    removed = space.zrem(key, [m for m, s in space.ranked(key) if match(m, s)])
    if removed > 0 and marker is not None and ttl > 0 and not space.exists(key):
        space.set(marker, "1", ttl, nx=True)
    return removed


def _remove_post(space: _Keyspace, key: str, marker: str | None, score: int, post_id: str) -> int:
    return _remove_matching(space, key, marker, lambda m, s: s == score and _field(m, "postId") == post_id)


def _newest(space: _Keyspace, key: str, limit: int | None = None) -> list[CacheEntry]:
    ranked = space.ranked(key)[::-1]
    return [CacheEntry(int(s), m) for m, s in (ranked if limit is None else ranked[:limit])]


class MemoryCache:
    """``CachedFeeds``: ``feed:{user}`` sorted sets, warm markers, the app's follow caches."""

    def __init__(self, max_length: int, ttl_seconds: int, key_prefix: str = keys.DEFAULT_PREFIX,
                 clock: Clock = time.monotonic) -> None:
        self.max_length, self.ttl_seconds = max_length, ttl_seconds
        self.own_keys = OwnKeys(key_prefix)
        self.space = _Keyspace(clock)

    def _keys(self, user_id: str) -> tuple[str, str | None]:
        return keys.feed_cache(user_id), self.own_keys.warm_marker(user_id)

    def add_to_warm_feeds(self, user_ids: Iterable[str], entry: CacheEntry) -> int:
        return sum(self._add(u, [entry]) for u in user_ids)

    def add_many_if_warm(self, user_id: str, entries: Sequence[CacheEntry]) -> bool:
        return bool(entries) and bool(self._add(user_id, entries))

    def _add(self, user_id: str, entries: Sequence[CacheEntry]) -> int:
        return _add_if_present(self.space, *self._keys(user_id), self.max_length, self.ttl_seconds, entries)

    def remove_post(self, user_ids: Iterable[str], score: int, post_id: str) -> int:
        return self.remove_entries((u, score, post_id) for u in user_ids)

    def remove_entries(self, entries: Iterable[tuple[str, int, str]]) -> int:
        return sum(_remove_post(self.space, *self._keys(u), score, post_id) for u, score, post_id in entries)

    def remove_author(self, user_id: str, author_id: str) -> int:
        return _remove_matching(self.space, *self._keys(user_id), lambda m, _: _field(m, "authorId") == author_id)

    def replace_feed(self, user_id: str, entries: Sequence[CacheEntry], keep_ttl: bool = False) -> int:
        """REPLACE_FEED."""
        feed, marker = self._keys(user_id)
        entries = entries[: self.max_length]
        remaining = self.space.pttl(feed)
        if marker is not None:
            remaining = max(remaining, self.space.pttl(marker))
        if keep_ttl and remaining == NO_KEY:
            return 0
        keep = keep_ttl and remaining > 0
        ms = remaining if keep else self.ttl_seconds * 1000
        self.space.delete(feed)
        self.space.zadd(feed, entries)
        if entries:
            self.space.pexpire(feed, ms)
        if marker is not None:
            self.space.set(marker, "1", ms)
        return len(entries)

    def is_warm(self, user_id: str) -> bool:
        feed, marker = self._keys(user_id)
        return self.space.exists(feed) or (marker is not None and self.space.exists(marker))

    def warm_users_page(self, cursor: str, count: int) -> tuple[str, list[str]]:
        """The whole walk in one step: every warm user."""
        feeds = {k.removeprefix(keys.FEED_CACHE_PREFIX) for k in list(self.space.zsets) if self.space.exists(k)}
        marked = {self.own_keys.user_of_warm_marker(k) for k in list(self.space.strings) if self.space.exists(k)}
        return WALK_START, sorted(feeds | {u for u in marked if u is not None})

    def drop_follow_caches(self, follower_id: str, followed_id: str) -> None:
        self.space.delete(keys.followers_cache(followed_id))
        self.space.delete(keys.following_cache(follower_id))

    def members_with_ttl(self, user_id: str) -> tuple[list[CacheEntry], int, int]:
        feed, marker = self._keys(user_id)
        marker_ttl = self.space.ttl(marker) if marker is not None else NO_KEY
        return _newest(self.space, feed), self.space.ttl(feed), marker_ttl

    def members(self, user_id: str, limit: int | None = None) -> list[CacheEntry]:
        return _newest(self.space, keys.feed_cache(user_id), limit)

    def feed_keys_page(self, cursor: str, count: int) -> tuple[str, list[str]]:
        """The whole walk in one step: every feed."""
        found = [k for k in list(self.space.zsets) if k.startswith(keys.FEED_CACHE_PREFIX) and self.space.exists(k)]
        return WALK_START, sorted(found)

    def trim_feeds(self, feed_keys: Sequence[str], max_length: int) -> list[int]:
        removed = []
        for key in feed_keys:
            before = len(self.space.zset(key))
            self.space.trim(key, max_length)
            removed.append(before - len(self.space.zset(key)))
        return removed


class MemoryAuthorLists:
    """``AuthorLists``: each huge author's newest posts, and the set of huge authors."""

    def __init__(self, max_length: int, ttl_seconds: int, clock: Clock = time.monotonic) -> None:
        self.max_length, self.ttl_seconds = max_length, ttl_seconds
        self.space = _Keyspace(clock)
        self.huge: set[str] | None = None  # None: not loaded

    def add_if_present(self, author_id: str, entries: Sequence[CacheEntry]) -> bool:
        if not entries:
            return True
        return bool(_add_if_present(self.space, author_id, None, self.max_length, self.ttl_seconds, entries))

    def add_many(self, author_id: str, entries: Sequence[CacheEntry]) -> None:
        if entries:
            self.space.zadd(author_id, entries)
            self.space.trim(author_id, self.max_length)
            self.space.pexpire(author_id, self.ttl_seconds * 1000)

    def remove_posts(self, author_id: str, posts: Iterable[tuple[int, str]]) -> int:
        return sum(_remove_post(self.space, author_id, None, score, post_id) for score, post_id in posts)

    def newest(self, author_ids: Sequence[str], limit: int) -> dict[str, list[CacheEntry]]:
        return {a: _newest(self.space, a, limit) for a in author_ids}

    def load_huge(self, author_ids: Iterable[str]) -> None:
        self.huge = (self.huge or set()) | set(author_ids)

    def add_huge_if_loaded(self, author_id: str) -> bool:
        if self.huge is None:
            return False
        self.huge.add(author_id)
        return True

    def huge_among(self, user_ids: Sequence[str]) -> list[str] | None:
        return None if self.huge is None else [u for u in user_ids if u in self.huge]


class MemoryCursors:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def load(self, name: str) -> str | None:
        return self.values.get(name)

    def save(self, name: str, value: str) -> None:
        self.values[name] = value

    def clear(self, name: str) -> None:
        self.values.pop(name, None)
