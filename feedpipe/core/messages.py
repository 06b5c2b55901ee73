"""What a fan-out or a retraction hands to later tasks, typed, and its JSON payload both ways.

A planner hands each full chunk of followers to a chunk task (``chunk_payload``), a walk
that spent its task's budget goes on in a fresh planner message (``resume_payload``), and a walk
split in two hands its upper segment to a new planner (``segment_payload``). Every payload is
the post's event payload with a field or two more, so a message is still an event to every
reader of events; ``followers_of``, ``resume_of`` and ``segment_of`` read them back, or raise
``PayloadError`` with a reason fit for a dead letter.

A payload a task started on and then retried or dead-lettered carries ``"attempted": true``
(``attempted``): its next run knows it may have written before, where the rest of its batch,
which never ran, does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

from feedpipe.core.events import PayloadError, PostPublished, PostRetracted, to_payload
from feedpipe.core.follower_segments import Segment
from feedpipe.core.items import Key


@dataclass(frozen=True)
class Resume:
    """Where a walk of an author's followers goes on: the GSI1 key its last page ended at, how
    many followers of its segment came before it, and the segment (None: every follower)."""

    start: Key
    walked: int
    segment: Segment | None = None


def chunk_payload(event: PostPublished | PostRetracted, followers: list[str]) -> dict[str, Any]:
    return {**to_payload(event), "followers": list(followers)}


def resume_payload(event: PostPublished | PostRetracted, resume: Resume) -> dict[str, Any]:
    payload = {**to_payload(event), "resume": {"start": resume.start, "walked": resume.walked}}
    return payload if resume.segment is None else {**payload, **_segment_field(resume.segment)}


def segment_payload(event: PostPublished | PostRetracted, segment: Segment) -> dict[str, Any]:
    return {**to_payload(event), **_segment_field(segment)}


def _segment_field(segment: Segment) -> dict[str, Any]:
    return {"segment": {"lo": segment.lo, "hi": segment.hi, "share": segment.share}}


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
    return Resume(start, walked, segment_of(payload))


def segment_of(payload: dict[str, Any]) -> Segment | None:
    """The segment of the followers a planner walks; None for all of them."""
    found = payload.get("segment")
    if found is None:
        return None
    lo, hi, share = (found.get(k) for k in ("lo", "hi", "share")) if isinstance(found, dict) else (None, None, None)
    if not isinstance(lo, str) or not (hi is None or isinstance(hi, str)) or type(share) is not int or share < 1:
        raise PayloadError("segment needs a lower bound, an upper bound or null, and a share of at least 1")
    return Segment(lo, hi, share)


def _is_key(value: Any) -> TypeGuard[Key]:
    """A DynamoDB key as LastEvaluatedKey gives it: names to ``{"S": "..."}``."""
    return isinstance(value, dict) and bool(value) and all(
        isinstance(name, str) and isinstance(typed, dict) and len(typed) == 1
        and all(isinstance(t, str) and isinstance(v, str) for t, v in typed.items())
        for name, typed in value.items()
    )


ATTEMPTED = "attempted"


def attempted(payload: Any) -> bool:
    """Whether a task started on this payload before (and retried or dead-lettered it)."""
    return isinstance(payload, dict) and payload.get(ATTEMPTED) is True


def mark_attempted(payload: Any) -> Any:
    """The payload, marked as started on (``attempted``); what is not an object stays as it is."""
    return {**payload, ATTEMPTED: True} if isinstance(payload, dict) else payload
