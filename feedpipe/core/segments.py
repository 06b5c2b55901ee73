"""Where one segment of ``feedpipe backfill``'s parallel Scan stands (``feeds.backfill``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Cursor = dict[str, Any]  # a Scan's LastEvaluatedKey, DynamoDB typed JSON


@dataclass(frozen=True, slots=True)
class SegmentProgress:
    total: int
    segment: int
    resume: Cursor | None = None  # where its Scan goes on; None: from the start, or done
    users: int = 0  # users built so far
    done: bool = False
    version: int = 0  # moved only from the version read (two tasks never both move it)

    def advanced(self, resume: Cursor | None, users: int) -> SegmentProgress:
        """This segment once a page of ``users`` ending at ``resume`` is built."""
        return SegmentProgress(self.total, self.segment, resume, self.users + users, resume is None, self.version + 1)
