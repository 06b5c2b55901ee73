"""Fan-out planning: chunks of followers for tasks, and BatchWriteItem-sized groups."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, TypeVar

from feedpipe.core.items import WRITE_BATCH_LIMIT, Key

T = TypeVar("T")


def chunked(values: Iterable[T], size: int) -> Iterator[list[T]]:
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    it = iter(values)
    while chunk := list(islice(it, size)):
        yield chunk


def unique(values: Iterable[T]) -> list[T]:
    """Values in first-seen order without repeats."""
    return list(dict.fromkeys(values))


def write_groups(
    requests: Iterable[tuple[Key, dict[str, Any]]], limit: int = WRITE_BATCH_LIMIT
) -> Iterator[list[dict[str, Any]]]:
    """Write requests grouped for BatchWriteItem: at most ``limit`` a call, never one key twice
    in a call (DynamoDB rejects that); a later request for a key replaces an earlier one."""
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for key, request in requests:
        by_key.pop(ident := (key["PK"]["S"], key["SK"]["S"]), None)
        by_key[ident] = request
    yield from chunked(by_key.values(), limit)


def split_audience(followers: Sequence[str], chunk_size: int) -> list[list[str]]:
    return list(chunked(unique(followers), chunk_size))
