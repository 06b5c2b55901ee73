"""Regeneration jobs as the app pushes them onto ``feed_regen_queue``, parsed and coalesced.

The seed's ``followUser`` pushes ``{"user_id", "action", "target_user", "timestamp"}``. A job
that cannot be read raises ``JobError`` with the reason its dead letter will carry.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from feedpipe.core.nesting import MAX_NESTING, NestingError, check_depth
from feedpipe.core.records import RecordError, validate_id

MAX_JOB_BYTES = 16_384


class JobError(ValueError):
    """A regeneration job feedpipe cannot read."""


@dataclass(frozen=True, slots=True)
class RegenJob:
    user_id: str
    action: str
    raw: str
    target_user: str | None = None


def parse_job(raw: bytes | str, actions: Collection[str]) -> RegenJob:
    """One queued job; JobError when it is not JSON, lacks a user, or names an unknown action."""
    if len(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")) > MAX_JOB_BYTES:
        raise JobError(f"job longer than {MAX_JOB_BYTES} bytes")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JobError("job is not UTF-8") from exc
    try:
        body = json.loads(raw)
        check_depth(body, "job")
    except RecursionError:
        raise JobError(f"job nests deeper than {MAX_NESTING} levels") from None
    except NestingError as exc:
        raise JobError(str(exc)) from exc
    except ValueError as exc:
        raise JobError(f"job is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise JobError("job is not a JSON object")
    try:
        user_id = validate_id(body.get("user_id"), "user_id")
    except RecordError as exc:
        raise JobError(str(exc)) from exc
    action = body.get("action")
    if not isinstance(action, str) or action not in actions:
        raise JobError(f"unknown action {action!r}")
    target = body.get("target_user")
    return RegenJob(user_id, str(action), raw, target if isinstance(target, str) else None)


def coalesce(jobs: Iterable[RegenJob]) -> list[str]:
    """The users to rebuild, each once, in the order their first job arrived."""
    return list(dict.fromkeys(job.user_id for job in jobs))
