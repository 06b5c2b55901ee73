"""Keys, indexes, item sizes and Query for the DynamoDB model (``bench.dynamo_model``).

An index (the base table's or a GSI's) keeps, per partition key, its rows keyed by
(sort key, base PK, base SK); a partition is sorted on its first Query after a change, so bulk
loads cost one sort. Only string keys are modelled (every feedpipe key is a string).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

QUERY_PAGE_BYTES = 1_000_000  # moto's cap on a page; DynamoDB's is "1 MB" of items read
_TOP = "\U0010ffff"
Row = tuple[str, str, str]


class ModelError(Exception):
    """An error answer: ``code`` is DynamoDB's ``__type`` suffix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message

    def body(self) -> dict[str, Any]:
        return {"__type": f"com.amazonaws.dynamodb.v20120810#{self.code}", "message": self.message}


@dataclass
class Index:
    name: str
    hash_attr: str
    range_attr: str | None
    rows: dict[str, dict[Row, tuple[str, str]]] = field(default_factory=dict)
    ordered: dict[str, list[Row]] = field(default_factory=dict)

    @classmethod
    def from_schema(cls, name: str, schema: list[dict[str, str]]) -> Index:
        by_type = {k["KeyType"]: k["AttributeName"] for k in schema}
        return cls(name, by_type["HASH"], by_type.get("RANGE"))

    @property
    def attrs(self) -> tuple[str, ...]:
        return (self.hash_attr, self.range_attr) if self.range_attr else (self.hash_attr,)

    def holds(self, item: dict[str, Any]) -> bool:
        return self.hash_attr in item and (self.range_attr is None or self.range_attr in item)

    def _row(self, item: dict[str, Any], base_key: tuple[str, str]) -> Row:
        return (_string(item[self.range_attr]) if self.range_attr else "", *base_key)

    def add(self, item: dict[str, Any], base_key: tuple[str, str]) -> None:
        if self.holds(item):
            partition = _string(item[self.hash_attr])
            self.rows.setdefault(partition, {})[self._row(item, base_key)] = base_key
            self.ordered.pop(partition, None)

    def remove(self, item: dict[str, Any], base_key: tuple[str, str]) -> None:
        if self.holds(item):
            partition = _string(item[self.hash_attr])
            rows = self.rows.get(partition, {})
            rows.pop(self._row(item, base_key), None)
            if not rows:
                self.rows.pop(partition, None)
            self.ordered.pop(partition, None)

    def sorted_rows(self, partition: str) -> list[Row]:
        found = self.ordered.get(partition)
        if found is None:
            found = self.ordered[partition] = sorted(self.rows.get(partition, ()))
        return found


def _string(value: dict[str, Any]) -> str:
    if "S" not in value:
        raise ModelError("ValidationException", "only string keys are modelled")
    return str(value["S"])


def key_of(index: Index, key: dict[str, Any]) -> tuple[str, str]:
    return _string(key[index.hash_attr]), _string(key[index.range_attr]) if index.range_attr else ""


def item_size(value: Any) -> int:
    """An item's size as moto counts it: attribute names plus values, in UTF-8 bytes."""
    return sum(len(name.encode()) + _value_size(v) for name, v in value.items())


def _value_size(value: dict[str, Any]) -> int:
    (kind, inner), = value.items()
    if kind in ("S", "N", "B"):
        return len(str(inner).encode())
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return sum(_value_size(v) for v in inner)
    if kind == "M":
        return item_size(inner)
    return sum(len(str(v).encode()) for v in inner)  # SS, NS, BS


def project(item: dict[str, Any], projection: str | None, names: dict[str, str]) -> dict[str, Any]:
    if not projection:
        return item
    wanted = [names.get(p.strip(), p.strip()) for p in projection.split(",")]
    if any("." in w or "[" in w for w in wanted):
        raise ModelError("ValidationException", "nested projections are not modelled")
    return {w: item[w] for w in wanted if w in item}


# -- key conditions ----------------------------------------------------------------------------

_COMPARE = re.compile(r"^\s*([#\w]+)\s*(=|<=|>=|<|>)\s*(:\w+)\s*$")
_BEGINS = re.compile(r"^\s*begins_with\s*\(\s*([#\w]+)\s*,\s*(:\w+)\s*\)\s*$", re.I)
_BETWEEN = re.compile(r"^\s*([#\w]+)\s+BETWEEN\s+(:\w+)\s+AND\s+(:\w+)\s*$", re.I)


@dataclass(frozen=True)
class Condition:
    attr: str
    op: str
    values: tuple[str, ...]

    def bounds(self) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        """Rows of a sorted partition in [low, high) satisfy it (None: to the end)."""
        v = self.values[0]
        return {
            "=": ((v,), (v + "\0",)), "begins_with": ((v,), (v + _TOP,)),
            "BETWEEN": ((v,), (self.values[-1] + "\0",)), "<": ((), (v,)), "<=": ((), (v + "\0",)),
            ">": ((v + "\0",), None), ">=": ((v,), None),
        }[self.op]  # fmt: skip


def parse_conditions(expression: str, names: dict[str, str], values: dict[str, Any]) -> list[Condition]:
    parts = re.split(r"\s+AND\s+", expression.strip(), flags=re.I)
    joined: list[str] = []
    for part in parts:  # BETWEEN :a AND :b was split too
        if joined and re.search(r"\sBETWEEN\s+:\w+\s*$", joined[-1], re.I):
            joined[-1] += f" AND {part}"
        else:
            joined.append(part)
    conditions = []
    for part in joined:
        for pattern, op in ((_BEGINS, "begins_with"), (_BETWEEN, "BETWEEN"), (_COMPARE, None)):
            match = pattern.match(part)
            if match:
                groups = match.groups()
                attr, refs = groups[0], groups[2:] if op is None else groups[1:]
                try:
                    typed = tuple(_string(values[r]) for r in refs)
                except KeyError as missing:
                    raise ModelError("ValidationException", f"undefined value {missing}") from None
                conditions.append(Condition(names.get(attr, attr), op or groups[1], typed))
                break
        else:
            raise ModelError("ValidationException", f"key condition not modelled: {part!r}")
    return conditions


@dataclass
class Query:
    """One Query page over ``index``: which rows, in which order, where it starts."""

    index: Index
    partition: str
    condition: Condition | None
    forward: bool
    start: Row | None

    def rows(self) -> Iterator[Row]:
        ordered = self.index.sorted_rows(self.partition)
        low, high = self.condition.bounds() if self.condition else ((), None)
        lo = bisect.bisect_left(ordered, low)
        hi = len(ordered) if high is None else bisect.bisect_left(ordered, high)
        if self.start is not None:
            if self.forward:
                lo = max(lo, bisect.bisect_right(ordered, self.start))
            else:
                hi = min(hi, bisect.bisect_left(ordered, self.start))
        positions = range(lo, hi) if self.forward else range(hi - 1, lo - 1, -1)
        return (ordered[i] for i in positions)
