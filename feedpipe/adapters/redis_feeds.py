"""Redis: the app's cached feeds (``feed:{user}``) and its follow caches.

Every script touches exactly one key, so each call lives in one cluster slot; many calls go
out in one pipeline (one round trip per chunk of followers and node, not per follower).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis

from feedpipe.adapters.redis_client import SCAN_START, RedisClient, eval_many, scan_page
from feedpipe.adapters.redis_client import connect_redis as connect_redis  # where callers find it
from feedpipe.core import keys
from feedpipe.core.entries import CacheEntry
from feedpipe.core.keys import OwnKeys

FEEDS_PHASE = "feeds|"  # a warm-user walk's cursor once the markers are done
_WRONGTYPE = "WRONGTYPE"

# Every script takes KEYS[1] the feed and, when the user has one, KEYS[2] their warm marker (in
# the feed's slot, see keys.py): a user is warm while either exists, so an empty feed (Redis
# keeps no empty sorted set) still gets fan-out's writes.

# ARGV[1] max length, ARGV[2] ttl seconds, ARGV[3..] score/member pairs. Only a warm feed is
# written (fan-out never recreates an inactive user's feed); both TTLs are refreshed.
ADD_IF_WARM = """
if redis.call('EXISTS', KEYS[1]) == 0 and (not KEYS[2] or redis.call('EXISTS', KEYS[2]) == 0) then
  return 0
end
for i = 3, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[1]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
if KEYS[2] then redis.call('SET', KEYS[2], '1', 'EX', ARGV[2]) end
return 1
"""

# Run after a removal: a feed it emptied leaves a marker for the rest of the feed's TTL.
KEEP_WARM = """
if removed > 0 and KEYS[2] and ttl > 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ttl, 'NX')
end
return removed
"""

# ARGV[1] score, ARGV[2] post id. Matches on the decoded postId, not the exact member bytes, so
# a member written under another member format still leaves.
REMOVE_POST = """
local removed, ttl = 0, redis.call('PTTL', KEYS[1])
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])) do
  local ok, doc = pcall(cjson.decode, m)
  if ok and type(doc) == 'table' and doc['postId'] == ARGV[2] then
    removed = removed + redis.call('ZREM', KEYS[1], m)
  end
end
""" + KEEP_WARM

# ARGV[1] author id.
REMOVE_AUTHOR = """
local removed, ttl = 0, redis.call('PTTL', KEYS[1])
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local ok, doc = pcall(cjson.decode, m)
  if ok and type(doc) == 'table' and doc['authorId'] == ARGV[1] then
    removed = removed + redis.call('ZREM', KEYS[1], m)
  end
end
""" + KEEP_WARM

# ARGV[1] ttl seconds, ARGV[2] keep the remaining TTL (1/0), ARGV[3..] pairs. One atomic swap: a
# reader sees the old feed or the new one, never an empty or half-built one. The user is warm
# afterwards, even with nothing to cache: the marker is set.
REPLACE_FEED = """
local remaining = redis.call('PTTL', KEYS[1])
if KEYS[2] then remaining = math.max(remaining, redis.call('PTTL', KEYS[2])) end
-- Keeping the TTL (a scheduled rebuild) is for users still warm: one who went cold since the
-- walk found them stays cold. A feed without a TTL (PTTL -1) is warm, and gets the full TTL.
if ARGV[2] == '1' and remaining == -2 then return 0 end
local keep = ARGV[2] == '1' and remaining > 0
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
if #ARGV >= 4 then
  if keep then redis.call('PEXPIRE', KEYS[1], remaining) else redis.call('EXPIRE', KEYS[1], ARGV[1]) end
end
if KEYS[2] then
  if keep then redis.call('SET', KEYS[2], '1', 'PX', remaining) else redis.call('SET', KEYS[2], '1', 'EX', ARGV[1]) end
end
return (#ARGV - 2) / 2
"""


class FeedCache:
    """The app's Redis feeds, written only where warm, trimmed and TTL-refreshed on write."""

    def __init__(self, client: RedisClient, max_length: int, ttl_seconds: int, own_keys: OwnKeys | None = None) -> None:
        self.client = client
        self.max_length = max_length
        self.ttl_seconds = ttl_seconds
        self.own_keys = own_keys or OwnKeys()
        self._add = client.register_script(ADD_IF_WARM)
        self._remove_post = client.register_script(REMOVE_POST)
        self._remove_author = client.register_script(REMOVE_AUTHOR)
        self._replace = client.register_script(REPLACE_FEED)

    def feed_keys(self, user_id: str) -> list[str]:
        """The keys every script takes for ``user_id``: the feed, and the warm marker if any."""
        marker = self.own_keys.warm_marker(user_id)
        return [keys.feed_cache(user_id)] + ([marker] if marker else [])

    def add_to_warm_feeds(self, user_ids: Iterable[str], entry: CacheEntry) -> int:
        """Add one entry to each warm feed; returns how many feeds were warm."""
        args = [self.max_length, self.ttl_seconds, *flat_entries([entry])]
        calls = [(self.feed_keys(user_id), args) for user_id in user_ids]
        return sum(int(r) for r in eval_many(self.client, self._add, calls))

    def add_many_if_warm(self, user_id: str, entries: Sequence[CacheEntry]) -> bool:
        if not entries:
            return False
        args = [self.max_length, self.ttl_seconds, *flat_entries(entries)]
        return bool(self._add(keys=self.feed_keys(user_id), args=args))

    def remove_post(self, user_ids: Iterable[str], score: int, post_id: str) -> int:
        return self.remove_entries((u, score, post_id) for u in user_ids)

    def remove_entries(self, entries: Iterable[tuple[str, int, str]]) -> int:
        """Remove each (user_id, score, post_id) from that user's cached feed, in one round trip."""
        calls = [(self.feed_keys(user_id), [score, post_id]) for user_id, score, post_id in entries]
        return sum(int(r) for r in eval_many(self.client, self._remove_post, calls))

    def remove_author(self, user_id: str, author_id: str) -> int:
        return int(self._remove_author(keys=self.feed_keys(user_id), args=[author_id]))

    def replace_feed(self, user_id: str, entries: Sequence[CacheEntry], keep_ttl: bool = False) -> int:
        """Swap the whole feed for ``entries`` (newest first) in one atomic call; the user is
        warm afterwards, even with no entries."""
        args = [self.ttl_seconds, int(keep_ttl), *flat_entries(entries[: self.max_length])]
        return int(self._replace(keys=self.feed_keys(user_id), args=args))

    def is_warm(self, user_id: str) -> bool:
        return bool(self.client.exists(*self.feed_keys(user_id)))

    def warm_users_page(self, cursor: str, count: int) -> tuple[str, list[str]]:
        """One step of a walk over every warm user (SCAN, never KEYS): first the warm markers,
        then the feeds that have none (written before markers existed, or by the app itself).
        Start with ``SCAN_START``; the walk is over when it comes back. A user may repeat."""
        if not cursor.startswith(FEEDS_PHASE):
            at, found = scan_page(self.client, cursor, self.own_keys.warm_marker_prefix + "*", count, "string")
            users = [u for u in (self.own_keys.user_of_warm_marker(_text(n)) for n in found) if u is not None]
            return (FEEDS_PHASE + SCAN_START if at == SCAN_START else at), users
        feeds = keys.FEED_CACHE_PREFIX + "*"
        at, found = scan_page(self.client, cursor.removeprefix(FEEDS_PHASE), feeds, count, "zset")
        users = [_text(n).removeprefix(keys.FEED_CACHE_PREFIX) for n in found]
        return (SCAN_START if at == SCAN_START else FEEDS_PHASE + at), self._unmarked(users)

    def _unmarked(self, user_ids: list[str]) -> list[str]:
        markers = [self.own_keys.warm_marker(u) for u in user_ids]
        pipe = self.client.pipeline(transaction=False)
        for marker in markers:
            if marker:
                pipe.exists(marker)
        found = iter(pipe.execute() if any(markers) else [])
        return [u for u, marker in zip(user_ids, markers, strict=True) if not (marker and next(found))]

    def drop_follow_caches(self, follower_id: str, followed_id: str) -> None:
        # Two DELs, not one: the keys may live in different cluster slots.
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(keys.followers_cache(followed_id))
        pipe.delete(keys.following_cache(follower_id))
        pipe.execute()

    def members_with_ttl(self, user_id: str) -> tuple[list[CacheEntry], int, int]:
        """The whole cached feed, newest first, with the TTLs in seconds of the feed and of the
        warm marker (-1: none, -2: no key), read in one round trip."""
        feed, marker = keys.feed_cache(user_id), self.own_keys.warm_marker(user_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.zrevrange(feed, 0, -1, withscores=True)
        pipe.ttl(feed)
        if marker:
            pipe.ttl(marker)
        raw, ttl, *marked = pipe.execute()
        return read_entries(raw), int(ttl), int(marked[0]) if marked else -2

    def members(self, user_id: str, limit: int | None = None) -> list[CacheEntry]:
        """The cached feed (its newest ``limit``, or all), newest first."""
        raw: list[tuple[bytes, float]] = self.client.zrevrange(  # type: ignore[assignment]
            keys.feed_cache(user_id), 0, -1 if limit is None else limit - 1, withscores=True
        )
        return read_entries(raw)

    def feed_keys_page(self, cursor: str, count: int) -> tuple[str, list[str]]:
        """One SCAN step over the sorted sets named ``feed:*``: SCAN's TYPE filter skips the
        app's other ``feed:`` names, so they are never touched."""
        at, found = scan_page(self.client, cursor, keys.FEED_CACHE_PREFIX + "*", count, "zset")
        return at, [_text(n) for n in found]

    def trim_feeds(self, feed_keys: Sequence[str], max_length: int) -> list[int]:
        """One pipeline, not a transaction: Redis may serve other clients between its commands."""
        pipe = self.client.pipeline(transaction=False)
        for key in feed_keys:
            pipe.zremrangebyrank(_name(key), 0, -(max_length + 1))
        removed: list[int] = []
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, redis.ResponseError):
                if not str(reply).startswith(_WRONGTYPE):
                    raise reply
                reply = 0  # deleted and recreated as another type since the SCAN: not a feed now
            removed.append(int(reply))
        return removed


def _text(name: bytes | str) -> str:
    """A key's name as text; bytes that are not UTF-8 (the app owns the names) survive the
    round trip through ``_name``."""
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name


def _name(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def flat_entries(entries: Iterable[CacheEntry]) -> list[Any]:
    """Entries as a script's ARGV tail, as ZADD takes them: score, member, score, member, ..."""
    return [part for entry in entries for part in (entry.score_ms, entry.member)]


def read_entries(raw: Iterable[tuple[bytes, float]]) -> list[CacheEntry]:
    """ZREVRANGE's (member, score) pairs ``WITHSCORES`` as entries."""
    return [CacheEntry(int(score), member.decode()) for member, score in raw]


class RedisCursors:
    """Where feedpipe's periodic sweeps go on, one string key each (names from ``OwnKeys``)."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client

    def load(self, name: str) -> str | None:
        raw = self.client.get(name)
        return None if raw is None else _text(raw)

    def save(self, name: str, value: str) -> None:
        self.client.set(name, value)

    def clear(self, name: str) -> None:
        self.client.delete(name)
