"""The app's writes on the in-memory stores: just enough of a DynamoDB client (and of a Redis
client) for ``feedpipe.dev.appsim.AppWriter`` and the tests' own raw writes to run unchanged on a
``MemoryTable`` and a ``MemoryCache``.

Only the expressions the app's writes (and the tests' own) use are understood (``SET a = :v,
...``, ``ADD a :v``, ``REMOVE a``, ``#names``, ``attribute_not_exists(PK)``); anything else
fails loudly rather than being half-applied.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from feedpipe.core import keys
from feedpipe.core.attributes import from_image
from feedpipe.core.entries import CacheEntry
from feedpipe.dev.appsim import AppWriter
from feedpipe.feeds.memory import MemoryTable
from feedpipe.feeds.memory_cache import MemoryCache
from feedpipe.feeds.stores import Stores

_CLAUSE = re.compile(r"(SET|ADD|REMOVE)\s+(.*?)(?=\s+(?:SET|ADD|REMOVE)\s+|$)")


class ConditionalCheckFailedError(Exception):
    pass


class MemoryDynamo:
    """``put_item``, ``update_item``, ``delete_item``, ``batch_write_item`` and
    ``transact_write_items`` (applied in order) on a ``MemoryTable``."""

    class exceptions:  # noqa: N801 - botocore's spelling, for ``client.exceptions.X``
        ConditionalCheckFailedException = ConditionalCheckFailedError

    def __init__(self, table: MemoryTable) -> None:
        self.table = table

    def put_item(self, Item: dict[str, Any], ConditionExpression: str | None = None, **_: Any) -> None:  # noqa: N803
        image = from_image(Item)
        if ConditionExpression is not None:
            if ConditionExpression != "attribute_not_exists(PK)":
                raise NotImplementedError(ConditionExpression)
            if (image["PK"], image["SK"]) in self.table.items:
                raise ConditionalCheckFailedError(ConditionExpression)
        self.table.put_image(image)

    def delete_item(self, Key: dict[str, Any], **_: Any) -> None:  # noqa: N803
        key = from_image(Key)
        self.table.delete_image(key["PK"], key["SK"])

    def update_item(
        self, Key: dict[str, Any], UpdateExpression: str,  # noqa: N803
        ExpressionAttributeValues: dict[str, Any] | None = None,  # noqa: N803
        ExpressionAttributeNames: dict[str, str] | None = None, **_: Any,  # noqa: N803
    ) -> None:
        key, values = from_image(Key), from_image(ExpressionAttributeValues or {})
        names = ExpressionAttributeNames or {}
        item = self.table.items.setdefault((key["PK"], key["SK"]), dict(key))
        for verb, body in _CLAUSE.findall(UpdateExpression.strip()):
            for action in body.split(","):
                if verb == "REMOVE":
                    item.pop(names.get(action.strip(), action.strip()), None)
                elif verb == "SET":
                    name, value = (part.strip() for part in action.split("="))
                    item[names.get(name, name)] = values[value]
                else:
                    name, value = action.split()
                    total = Decimal(str(item.get(name, 0))) + Decimal(str(values[value]))
                    item[name] = int(total) if total == total.to_integral_value() else float(total)

    def batch_write_item(self, RequestItems: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:  # noqa: N803
        for requests in RequestItems.values():
            for request in requests:
                if "PutRequest" in request:
                    self.put_item(request["PutRequest"]["Item"])
                else:
                    self.delete_item(request["DeleteRequest"]["Key"])
        return {"UnprocessedItems": {}}

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> None:  # noqa: N803
        calls = {"Put": self.put_item, "Update": self.update_item, "Delete": self.delete_item}
        for part in TransactItems:
            ((kind, body),) = part.items()
            calls[kind](**body)


class MemoryAppRedis:
    """The app's Redis writes beside its table writes: follow caches dropped, regen jobs queued."""

    def __init__(self, cache: MemoryCache) -> None:
        self.cache = cache
        self.regen_jobs: list[str] = []

    def delete(self, *names: str) -> int:
        gone = sum(self.cache.space.exists(n) for n in names)
        for name in names:
            self.cache.space.delete(name)
        return gone

    def lpush(self, name: str, *values: str) -> int:
        self.regen_jobs[:0] = reversed(values)
        return len(self.regen_jobs)


def memory_app(stores: Stores, table_name: str = "SocialMediaApp") -> AppWriter:
    """The app, writing (item by item, not in transactions) to in-memory stores."""
    assert isinstance(stores.table, MemoryTable) and isinstance(stores.cache, MemoryCache)
    return AppWriter(MemoryDynamo(stores.table), MemoryAppRedis(stores.cache), table_name, transactional=False)


class MemoryFeedsRedis:
    """The app's Redis as a test reads and writes it by hand, with the feeds in memory: the keys
    a ``MemoryCache`` holds (``feed:{user}`` and the warm markers) are its keyspace; every other
    key (the regeneration queue and its leases, the follow caches) is ``rest``'s, a fakeredis
    the regen queue works on. Replies are bytes, as redis-py's."""

    def __init__(self, cache: MemoryCache, rest: Any) -> None:
        self.cache, self.rest = cache, rest
        self.space = cache.space

    def _ours(self, name: str | bytes) -> bool:
        text = name.decode() if isinstance(name, bytes) else name
        return text.startswith(keys.FEED_CACHE_PREFIX) or self.cache.own_keys.user_of_warm_marker(text) is not None

    def __getattr__(self, command: str) -> Any:  # lists, SCAN, ...: the rest's
        return getattr(self.rest, command)

    def exists(self, *names: str) -> int:
        return sum(self.space.exists(n) if self._ours(n) else self.rest.exists(n) for n in names)

    def delete(self, *names: str) -> int:
        gone = 0
        for name in names:
            if self._ours(name):
                gone += self.space.exists(name)
                self.space.delete(name)
            else:
                gone += self.rest.delete(name)
        return gone

    def zadd(self, name: str, mapping: dict[str, float]) -> int:
        if not self._ours(name):
            return int(self.rest.zadd(name, mapping))
        fresh = [m for m in mapping if m not in self.space.zset(name)]
        self.space.zadd(name, [CacheEntry(int(score), member) for member, score in mapping.items()])
        return len(fresh)

    def zrem(self, name: str, *members: str | bytes) -> int:
        if not self._ours(name):
            return int(self.rest.zrem(name, *members))
        return self.space.zrem(name, [m.decode() if isinstance(m, bytes) else m for m in members])

    def zrevrange(self, name: str, start: int, end: int, withscores: bool = False) -> list[Any]:
        if not self._ours(name):
            return list(self.rest.zrevrange(name, start, end, withscores=withscores))
        ranked = self.space.ranked(name)[::-1]
        picked = ranked[start : None if end == -1 else end + 1]
        return [(m.encode(), s) if withscores else m.encode() for m, s in picked]

    def zscore(self, name: str, member: str) -> float | None:
        return self.space.zset(name).get(member) if self._ours(name) else self.rest.zscore(name, member)

    def zcard(self, name: str) -> int:
        return len(self.space.zset(name)) if self._ours(name) else int(self.rest.zcard(name))

    def expire(self, name: str, seconds: int) -> bool:
        if not self._ours(name):
            return bool(self.rest.expire(name, seconds))
        existed = self.space.exists(name)
        self.space.pexpire(name, seconds * 1000)
        return existed

    def persist(self, name: str) -> bool:
        if not self._ours(name):
            return bool(self.rest.persist(name))
        return self.space.exists(name) and self.space.deadlines.pop(name, None) is not None

    def ttl(self, name: str) -> int:
        return self.space.ttl(name) if self._ours(name) else int(self.rest.ttl(name))
