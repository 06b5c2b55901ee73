"""What a fan-out or a retraction hands to later tasks, typed, and its JSON payload both ways.

A planner hands each full chunk of followers to a chunk task (``chunk_payload``), and a walk
that spent its task's budget goes on in a fresh planner message (``resume_payload``). Both
payloads are the post's event payload with one more field, so a message is still an event to
every reader of events; ``followers_of`` and ``resume_of`` read that field back, or raise
``PayloadError`` with a reason fit for a dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

from feedpipe.core.events import PayloadError, PostPublished, PostRetracted, to_payload
from feedpipe.core.items import Key


@dataclass(frozen=True)
class Resume:
    """Where a walk of an author's followers goes on: the GSI1 key its last page ended at, and
    how many followers came before it."""

    start: Key
    walked: int


def chunk_payload(event: PostPublished | PostRetracted, followers: list[str]) -> dict[str, Any]:
    return {**to_payload(event), "followers": list(followers)}


def resume_payload(event: PostPublished | PostRetracted, resume: Resume) -> dict[str, Any]:
    return {**to_payload(event), "resume": {"start": resume.start, "walked": resume.walked}}


def followers_of(payload: dict[str, Any]) -> list[str]:
    """The followers a chunk message is for."""
    followers = payload.get("followers")
    if not isinstance(followers, list) or not all(isinstance(f, str) for f in followers):
        raise PayloadError("chunk payload has no list of follower ids")
    return followers


def resume_of(payload: dict[str, Any]) -> Resume | None:
    """Where an earlier planner stopped its walk; None for a walk from the start."""
    found = payload.get("resume")
    if found is None:
        return None
    start, walked = (found.get("start"), found.get("walked")) if isinstance(found, dict) else (None, None)
    if not _is_key(start) or type(walked) is not int or walked < 0:
        raise PayloadError("resume needs a start key and a count of followers walked")
    return Resume(start, walked)


def _is_key(value: Any) -> TypeGuard[Key]:
    """A DynamoDB key as LastEvaluatedKey gives it: names to ``{"S": "..."}``."""
    return isinstance(value, dict) and bool(value) and all(
        isinstance(name, str) and isinstance(typed, dict) and len(typed) == 1
        and all(isinstance(t, str) and isinstance(v, str) for t, v in typed.items())
        for name, typed in value.items()
    )
