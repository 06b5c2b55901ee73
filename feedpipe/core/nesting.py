"""How deep data from outside may nest, checked and clipped without recursion.

DynamoDB allows 32 levels of nesting in an item, and its stream records (typed values,
envelope) stay under 80 levels of JSON. What nests deeper than ``MAX_NESTING`` is not a change
DynamoDB made, and ``json.dumps`` of something nested a thousand deep overflows Python's stack:
a regen job that deep is refused, and a dead letter keeps a copy clipped at the limit.
"""

from __future__ import annotations

from typing import Any

MAX_NESTING = 100


class NestingError(ValueError):
    """Data nested deeper than the limit; the message names what and the limit."""


def check_depth(value: Any, what: str, limit: int = MAX_NESTING) -> None:
    """NestingError when ``value`` nests objects and lists deeper than ``limit``. Walked a level
    at a time, not by recursion, so no depth can exhaust Python's stack."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            raise NestingError(f"{what} nests deeper than {limit} levels")
        below: list[Any] = []
        for node in level:
            children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
            below.extend(child for child in children if isinstance(child, dict | list))
        level = below


def clip_depth(value: Any, limit: int = MAX_NESTING) -> Any:
    """``value`` itself, or, when it nests deeper than ``limit``, a copy with what lies deeper
    replaced by a note: what a dead letter can keep of a record too deep to serialize."""
    try:
        check_depth(value, "value", limit)
    except NestingError:
        return _clipped(value, limit)
    return value


def _clipped(value: Any, limit: int) -> Any:
    """Recursion stops at ``limit``, well inside Python's own."""
    if not isinstance(value, dict | list):
        return value
    if limit <= 0:
        return f"(cut: nested deeper than {MAX_NESTING} levels)"
    if isinstance(value, dict):
        return {str(k): _clipped(v, limit - 1) for k, v in value.items()}
    return [_clipped(v, limit - 1) for v in value]
