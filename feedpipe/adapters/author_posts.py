"""Redis side of fan-out-on-read: each huge author's newest posts, and the set of huge authors.

Both are caches of durable truth: an author's posts are the post items on GSI1, and the set
mirrors the ``FANOUT_ON_READ`` items (``adapters/huge_authors``). Either may vanish (eviction, a
restart, TTL) and is rebuilt whole by whoever finds it missing, never recreated partial: a
list that exists is taken as complete, so every script that adds to one adds only if it exists.
Every call touches one key, so each lives in one cluster slot, and no script goes through a
pipeline (redis-py's cluster pipeline cannot load scripts).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from feedpipe.adapters.redis_client import eval_many
from feedpipe.adapters.redis_feeds import ADD_IF_WARM, REMOVE_POST, flat_entries, read_entries
from feedpipe.core.entries import CacheEntry
from feedpipe.core.keys import OwnKeys

# Keeps the huge-author set in existence when no author is huge: the set existing means "loaded
# from the table". No user id is empty, so it never matches one.
LOADED_SENTINEL = ""

# KEYS[1] author list; ARGV[1] max length, ARGV[2] ttl seconds, ARGV[3..] score/member pairs.
# Only for a rebuild: creates the key.
ADD_ALWAYS = """
for i = 3, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
if #ARGV < 4 then return 0 end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[1]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1] huge-author set; ARGV ids. -1 when the set is not loaded, else a flag per id.
HUGE_AMONG = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('SMISMEMBER', KEYS[1], unpack(ARGV))
"""
IDS_PER_CALL = 1000  # well under Lua's stack limit for unpack()

# KEYS[1] huge-author set; ARGV[1] author. Only a loaded set takes a member.
SADD_IF_LOADED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

Entries = Sequence[CacheEntry]


class AuthorPosts:
    """``{prefix}author_posts:{author}`` sorted sets and the ``{prefix}huge_authors`` set."""

    def __init__(self, client: redis.Redis | RedisCluster, own: OwnKeys, max_length: int, ttl_seconds: int) -> None:
        self.client = client
        self.own = own
        self.max_length = max_length
        self.ttl_seconds = ttl_seconds
        self._add_if_present = client.register_script(ADD_IF_WARM)
        self._add_always = client.register_script(ADD_ALWAYS)
        self._remove_post = client.register_script(REMOVE_POST)
        self._sadd_if_loaded = client.register_script(SADD_IF_LOADED)
        self._huge_among = client.register_script(HUGE_AMONG)

    # -- per-author lists --------------------------------------------------------------------

    def add_if_present(self, author_id: str, entries: Entries) -> bool:
        """Add to the author's list, trimmed and TTL refreshed; False (nothing written) when the
        list is missing, which then needs a rebuild."""
        if not entries:
            return True
        return bool(self._add_if_present(keys=[self.own.author_posts(author_id)], args=self._args(entries)))

    def add_many(self, author_id: str, entries: Entries) -> None:
        """Add to the author's list, creating it: only for a rebuild that holds the whole list."""
        if entries:
            self._add_always(keys=[self.own.author_posts(author_id)], args=self._args(entries))

    def remove_posts(self, author_id: str, posts: Iterable[tuple[int, str]]) -> int:
        """Remove each (score, post_id) from the author's list (as from a feed), in one round trip."""
        key = self.own.author_posts(author_id)
        calls = [(key, [score, post_id]) for score, post_id in posts]
        return sum(int(r) for r in eval_many(self.client, self._remove_post, calls)) if calls else 0

    def newest(self, author_ids: Sequence[str], limit: int) -> dict[str, list[CacheEntry]]:
        """Each author's newest ``limit`` entries, in one round trip; an author whose
        list is missing maps to an empty list (Redis never keeps an empty sorted set)."""
        pipe = self.client.pipeline(transaction=False)
        for author_id in author_ids:
            pipe.zrevrange(self.own.author_posts(author_id), 0, limit - 1, withscores=True)
        replies: list[list[tuple[bytes, float]]] = pipe.execute()
        return {a: read_entries(r) for a, r in zip(author_ids, replies, strict=True)}

    def _args(self, entries: Entries) -> list[Any]:
        return [self.max_length, self.ttl_seconds, *flat_entries(entries)]

    # -- the huge-author set ----------------------------------------------------------------

    def load_huge(self, author_ids: Iterable[str]) -> None:
        """Add every registered author (a union: a concurrent registration is never undone)."""
        self.client.sadd(self.own.huge_authors, LOADED_SENTINEL, *author_ids)

    def add_huge_if_loaded(self, author_id: str) -> bool:
        return bool(self._sadd_if_loaded(keys=[self.own.huge_authors], args=[author_id]))

    def huge_among(self, user_ids: Sequence[str]) -> list[str] | None:
        """Which of ``user_ids`` are huge; None when the set is not loaded."""
        found: list[str] = []
        for start in range(0, max(len(user_ids), 1), IDS_PER_CALL):
            ids = list(user_ids[start : start + IDS_PER_CALL]) or [LOADED_SENTINEL]
            flags = self._huge_among(keys=[self.own.huge_authors], args=ids)
            if flags == -1:
                return None
            found += [u for u, flag in zip(ids, flags, strict=True) if flag and u != LOADED_SENTINEL]
        return found
