"""A moto server that answers Query and Scan without reading the whole table each call.

    python -m tests.e2e.fast_moto -H 127.0.0.1 -p PORT     # moto.server's own arguments

moto 5's ``Table.query`` walks every item of the table to find one partition (GSI or not), and
every ``all_items()`` call (each Query, each Scan page) sorts the whole table with Python-level
comparisons: at 200k items a Query costs ~1 s, and a first deploy of thousands of users needs
tens of thousands of them. Here ``all_items`` hands each call only what it can match:

- a Query on the table: the items of its partition (a dict lookup);
- a Query on a GSI: the items an index of that GSI's partition key points at, a superset kept
  up to date on every write (stale entries are resolved and dropped at read);
- a Scan page after ``ExclusiveStartKey``: the items after that key, by bisection of a sorted
  key list cached until the next write.

And moto's response serializer walks botocore's model member by member, ~60 µs an attribute
value (most of a Query's time): an ``AttributeValue`` without binaries is already in its wire
form (``{"S": "…"}``), so it is written as it is.

moto's own code still applies every key condition, filter, sort, page limit and projection to
those candidates, so answers are the ones moto would give; only the candidates are narrowed.
Writes, streams and everything else are moto's, unchanged.

And each request pays for things no answer needs (``lighten_serving``): moto's dispatcher lists
its own package directory (``os.listdir`` and an ``isdir`` for each of ~150 entries) to route
every request, and werkzeug formats a log line for each, which the tests send nowhere. The
list is made once, and request lines are logged only at WARNING (werkzeug's errors still are):
~1.8 ms of moto's CPU a GetItem before, ~1.4 ms after.

And moto keeps a reference to every model instance it ever made (``BaseModel.__new__`` appends
each to its class's ``instances_tracked``, for its dashboard): every ``Item`` a write, a Query
or a Scan page copies or projects, every stream record and every shard iterator a GetRecords
hands out lives until the server stops. Over a big table the server grew by ~1.4 kB for each
item a Scan read (a first deploy's settle checks took it past 9 GB) and every full garbage
collection walked them all. Nothing is tracked here (moto's reset empties those lists and
then fills them again; the models themselves are dropped by the reset as before).
"""

from __future__ import annotations

import bisect
import inspect
import logging
import sys
import threading
from collections import defaultdict
from typing import Any

from moto import backends
from moto.core.common_models import BaseModel
from moto.core.serialize import BaseJSONSerializer
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table

_local = threading.local()  # the narrowing asked for by the request this thread serves
_lock = threading.RLock()
_original_all_items = Table.all_items
_original_query = Table.query
_original_scan = Table.scan
_original_put = Table.put_item
_original_delete = Table.delete_item
_original_update = DynamoDBBackend.update_item
_original_structure = BaseJSONSerializer._serialize_type_structure
_QUERY_SIGNATURE = inspect.signature(_original_query)
_SCAN_SIGNATURE = inspect.signature(_original_scan)


class _State:
    """Per table: a write counter, the sorted items of the last count, GSI partition indexes."""

    def __init__(self) -> None:
        self.version = 0
        self.sorted_at = -1
        self.items: list[Item] = []
        self.keys: list[tuple[Any, ...]] = []
        self.gsi: dict[str, dict[Any, set[tuple[Any, Any]]]] | None = None


def _state(table: Table) -> _State:
    state: _State = table.__dict__.setdefault("_fast_state", _State())
    return state


def _sort_key(item: Item) -> tuple[Any, ...]:
    # moto sorts by (hash_key, range_key) DynamoTypes, which compare by cast_value.
    return (item.hash_key.cast_value, item.range_key.cast_value if item.range_key else "")


def _sorted(table: Table) -> _State:
    state = _state(table)
    with _lock:
        if state.sorted_at != state.version:
            items: list[Item] = [i for h in table.items.values() for i in (h.values() if table.range_key_attr else [h])]  # type: ignore[misc]
            items.sort(key=_sort_key)
            state.items, state.keys, state.sorted_at = items, [_sort_key(i) for i in items], state.version
        return state


def _gsi_hash_attrs(table: Table) -> dict[str, str]:
    return {i.name: next(k["AttributeName"] for k in i.schema if k["KeyType"] == "HASH")
            for i in (table.global_indexes or [])}


def _index(state: _State, table: Table, item: Item) -> None:
    if state.gsi is None:
        return
    for name, attr in _gsi_hash_attrs(table).items():
        value = item.attrs.get(attr)
        if isinstance(value, DynamoType) and value.type in ("S", "N", "B"):
            state.gsi[name][value].add((item.hash_key, item.range_key))


def _gsi_candidates(table: Table, index_name: str, value: DynamoType) -> list[Item]:
    state = _state(table)
    with _lock:
        if state.gsi is None:
            state.gsi = {name: defaultdict(set) for name in _gsi_hash_attrs(table)}
            for item in _original_all_items(table):
                _index(state, table, item)
        found: list[Item] = []
        stale: list[tuple[Any, Any]] = []
        for key in state.gsi.get(index_name, {}).get(value, ()):
            held = table.get_item(*key)
            if held is None:
                stale.append(key)
            else:
                found.append(held)
        for key in stale:
            state.gsi[index_name][value].discard(key)
        return found


def all_items(self: Table) -> list[Item]:
    narrowed = getattr(_local, "narrowed", None)
    if narrowed is not None and narrowed[0] is self:
        return list(narrowed[1])
    return list(_sorted(self).items)


def query(self: Table, *args: Any, **kwargs: Any) -> Any:
    bound = _QUERY_SIGNATURE.bind(self, *args, **kwargs).arguments
    hash_key, index_name = bound.get("hash_key"), bound.get("index_name")
    conditions = bound.get("hash_key_conditions") or []
    if index_name:
        attr = _gsi_hash_attrs(self).get(index_name)
        values = [v for name, v in conditions if name == attr] or ([hash_key] if hash_key is not None else [])
        candidates = _gsi_candidates(self, index_name, values[0]) if attr and len(conditions) <= 1 and values else None
    else:
        with _lock:
            part = self.items.get(hash_key) if hash_key is not None else None
            candidates = list(part.values()) if isinstance(part, dict) else [part] if part is not None else []
    if candidates is None:
        return _original_query(self, *args, **kwargs)
    _local.narrowed = (self, candidates)
    try:
        return _original_query(self, *args, **kwargs)
    finally:
        _local.narrowed = None


def scan(self: Table, *args: Any, **kwargs: Any) -> Any:
    bound = _SCAN_SIGNATURE.bind(self, *args, **kwargs).arguments
    exclusive_start_key = bound.get("exclusive_start_key")
    if exclusive_start_key is None or bound.get("index_name"):
        return _original_scan(self, *args, **kwargs)
    state = _sorted(self)
    start = DynamoType(exclusive_start_key[self.hash_key_attr]).cast_value
    rest = DynamoType(exclusive_start_key[self.range_key_attr]).cast_value if self.range_key_attr else ""
    at = bisect.bisect_left(state.keys, (start, rest))
    _local.narrowed = (self, state.items[at:])
    try:
        return _original_scan(self, *args, **kwargs)
    finally:
        _local.narrowed = None


def put_item(self: Table, *args: Any, **kwargs: Any) -> Item:
    item = _original_put(self, *args, **kwargs)
    state = _state(self)
    with _lock:
        state.version += 1
        _index(state, self, item)
    return item


def delete_item(self: Table, *args: Any, **kwargs: Any) -> Any:
    result = _original_delete(self, *args, **kwargs)
    with _lock:
        _state(self).version += 1
    return result


def update_item(self: DynamoDBBackend, table_name: str, key: dict[str, Any], *args: Any, **kwargs: Any) -> Item:
    item = _original_update(self, table_name, key, *args, **kwargs)
    table = self.get_table(table_name)
    state = _state(table)
    with _lock:
        state.version += 1
        if item is not None:  # updated in place: it may have gained a GSI key
            _index(state, table, table.get_item(item.hash_key, item.range_key) or item)
    return item


def _wire_ready(value: Any) -> bool:
    """An attribute value JSON carries as it is: no binary (B, BS) anywhere in it."""
    if not isinstance(value, dict) or len(value) != 1:
        return False
    ((kind, inner),) = value.items()
    if kind in ("S", "N", "BOOL", "NULL", "SS", "NS"):
        return True
    if kind == "M":
        return isinstance(inner, dict) and all(_wire_ready(v) for v in inner.values())
    if kind == "L":
        return isinstance(inner, list) and all(_wire_ready(v) for v in inner)
    return False


def serialize_structure(self: BaseJSONSerializer, serialized: Any, value: Any, shape: Any, key: str) -> None:
    if key and shape.name == "AttributeValue" and _wire_ready(value):
        serialized[key] = value
        return
    _original_structure(self, serialized, value, shape, key)


def _untracked(cls: type, *_: Any, **__: Any) -> Any:
    """``BaseModel.__new__`` without the ``instances_tracked`` list."""
    return object.__new__(cls)


def lighten_serving() -> None:
    """moto's module list made once (it is the package's folders: fixed while the server runs),
    and werkzeug's line per request not logged."""
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def install() -> None:
    lighten_serving()
    BaseModel.__new__ = _untracked  # type: ignore[method-assign, assignment]
    BaseJSONSerializer._serialize_type_structure = serialize_structure  # type: ignore[method-assign]
    Table.all_items = all_items  # type: ignore[method-assign]
    Table.query = query  # type: ignore[method-assign]
    Table.scan = scan  # type: ignore[method-assign]
    Table.put_item = put_item  # type: ignore[method-assign]
    Table.delete_item = delete_item  # type: ignore[method-assign]
    DynamoDBBackend.update_item = update_item  # type: ignore[method-assign]


if __name__ == "__main__":
    from moto.server import main

    install()
    main(sys.argv[1:])
