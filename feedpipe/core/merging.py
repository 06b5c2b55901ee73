"""Merging feed sources for a reader: the user's own feed and the lists of the huge authors they
follow (fan-out-on-read). Pure: sources come in as cache entries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from feedpipe.core.entries import CacheEntry

Source = Sequence[CacheEntry]  # any order


def merge_feeds(sources: Iterable[Source], limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` decoded members across every source, each post once (by ``postId``:
    a post pushed before its author became huge is in both the feed and the author's list).
    Ties on the score go to the greater member, as ZREVRANGE orders them; members that are not
    JSON objects with a ``postId`` are skipped."""
    entries = sorted((entry for source in sources for entry in source), reverse=True)
    merged: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in entries:
        if len(merged) >= limit:
            break
        body = decode_member(entry.member)
        if body is None or body["postId"] in seen:
            continue
        seen.add(body["postId"])
        merged.append(body)
    return merged


def decode_member(member: str) -> dict[str, Any] | None:
    try:
        body = json.loads(member)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("postId"), str):
        return None
    return body
