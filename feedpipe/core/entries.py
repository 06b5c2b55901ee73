"""A cached feed's entry: one member of a sorted set (``feed:{user}``, an author's list) and its
score, the post's ``created_at`` in epoch milliseconds.

The one shape an entry has between layers, going in and coming out, whatever order Redis'
commands put the two in (ZADD takes score then member, ZREVRANGE gives member then score): the
adapters convert at their edge. Entries order as (score, member), as a sorted set does.
"""

from __future__ import annotations

from typing import NamedTuple


class CacheEntry(NamedTuple):
    score_ms: int
    member: str
