"""Redis: the app's cached feeds (``feed:{user}``) and its follow caches.

Every script touches exactly one key, so each call lives in one cluster slot; many calls go
out in one pipeline (one round trip per chunk of followers and node, not per follower).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from feedpipe.adapters.redis_client import RedisClient, eval_many
from feedpipe.adapters.redis_client import connect_redis as connect_redis  # where callers find it
from feedpipe.core import keys

# KEYS[1] feed; ARGV[1] max length, ARGV[2] ttl seconds, ARGV[3..] score/member pairs.
# Only a warm feed (the key exists) is written: fan-out never recreates an inactive user's feed.
ADD_IF_WARM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 3, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[1]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1] feed; ARGV[1] score, ARGV[2] post id. Matches on the decoded postId, not the exact
# member bytes, so a member written under another member format still leaves.
REMOVE_POST = """
local removed = 0
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])) do
  local ok, doc = pcall(cjson.decode, m)
  if ok and type(doc) == 'table' and doc['postId'] == ARGV[2] then
    removed = removed + redis.call('ZREM', KEYS[1], m)
  end
end
return removed
"""

# KEYS[1] feed; ARGV[1] author id.
REMOVE_AUTHOR = """
local removed = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local ok, doc = pcall(cjson.decode, m)
  if ok and type(doc) == 'table' and doc['authorId'] == ARGV[1] then
    removed = removed + redis.call('ZREM', KEYS[1], m)
  end
end
return removed
"""

# KEYS[1] feed; ARGV[1] ttl seconds, ARGV[2] keep the remaining TTL (1/0), ARGV[3..] pairs.
# One atomic swap: a reader sees the old feed or the new one, never an empty or half-built one.
REPLACE_FEED = """
local remaining = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
if #ARGV >= 4 then
  if ARGV[2] == '1' and remaining > 0 then
    redis.call('PEXPIRE', KEYS[1], remaining)
  else
    redis.call('EXPIRE', KEYS[1], ARGV[1])
  end
end
return (#ARGV - 2) / 2
"""


class FeedCache:
    """The app's Redis feeds, written only where warm, trimmed and TTL-refreshed on write."""

    def __init__(self, client: RedisClient, max_length: int, ttl_seconds: int) -> None:
        self.client = client
        self.max_length = max_length
        self.ttl_seconds = ttl_seconds
        self._add = client.register_script(ADD_IF_WARM)
        self._remove_post = client.register_script(REMOVE_POST)
        self._remove_author = client.register_script(REMOVE_AUTHOR)
        self._replace = client.register_script(REPLACE_FEED)

    def add_to_warm_feeds(self, user_ids: Iterable[str], score: int, member: str) -> int:
        """Add one member to each warm feed; returns how many feeds were warm."""
        args = [self.max_length, self.ttl_seconds, score, member]
        calls = [(keys.feed_cache(user_id), args) for user_id in user_ids]
        return sum(int(r) for r in eval_many(self.client, self._add, calls))

    def add_many_if_warm(self, user_id: str, entries: Sequence[tuple[int, str]]) -> bool:
        if not entries:
            return False
        args = [self.max_length, self.ttl_seconds, *flat_entries(entries)]
        return bool(self._add(keys=[keys.feed_cache(user_id)], args=args))

    def remove_post(self, user_ids: Iterable[str], score: int, post_id: str) -> int:
        return self.remove_entries((u, score, post_id) for u in user_ids)

    def remove_entries(self, entries: Iterable[tuple[str, int, str]]) -> int:
        """Remove each (user_id, score, post_id) from that user's cached feed, in one round trip."""
        calls = [(keys.feed_cache(user_id), [score, post_id]) for user_id, score, post_id in entries]
        return sum(int(r) for r in eval_many(self.client, self._remove_post, calls))

    def remove_author(self, user_id: str, author_id: str) -> int:
        return int(self._remove_author(keys=[keys.feed_cache(user_id)], args=[author_id]))

    def replace_feed(self, user_id: str, entries: Sequence[tuple[int, str]], keep_ttl: bool = False) -> int:
        """Swap the whole feed for ``entries`` (newest first) in one atomic call."""
        args = [self.ttl_seconds, int(keep_ttl), *flat_entries(entries[: self.max_length])]
        return int(self._replace(keys=[keys.feed_cache(user_id)], args=args))


    def drop_follow_caches(self, follower_id: str, followed_id: str) -> None:
        # Two DELs, not one: the keys may live in different cluster slots.
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(keys.followers_cache(followed_id))
        pipe.delete(keys.following_cache(follower_id))
        pipe.execute()

    def members(self, user_id: str, limit: int | None = None) -> list[tuple[str, int]]:
        """The cached feed (its newest ``limit``, or all), newest first, as (member, score) pairs."""
        raw: list[tuple[bytes, float]] = self.client.zrevrange(  # type: ignore[assignment]
            keys.feed_cache(user_id), 0, -1 if limit is None else limit - 1, withscores=True
        )
        return [(m.decode(), int(s)) for m, s in raw]


def flat_entries(entries: Iterable[tuple[int, str]]) -> list[Any]:
    """(score, member) pairs as a script's ARGV tail: score, member, score, member, ..."""
    return [part for pair in entries for part in pair]
