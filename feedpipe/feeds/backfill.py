"""``feedpipe backfill``: every user's feed built from the table, on a first deploy.

The users are found by a parallel Scan cut into segments; a task works through one segment a
page at a time, recording after each page where its Scan goes on (``Stores.backfill_progress``),
so a ``kill -9`` anywhere costs the page in hand. Each user's durable feed is built by the same
rule a ``rebuild`` uses (``rebuild_durable``: each followee's newest live posts, every step
settled against the table), and the cache of a warm user is rebuilt from it. Because every step
settles, the consumer may apply the stream's changes at the same time: a follow, an unfollow or
a delete landing at any point ends as it would alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from feedpipe.core.segments import SegmentProgress
from feedpipe.feeds.rebuild import rebuild_cache, rebuild_durable
from feedpipe.feeds.stores import Stores

log = logging.getLogger(__name__)

PAGE_ITEMS = 500  # table items a Scan page reads (users are among them)


@dataclass(frozen=True, slots=True)
class SegmentStep:
    users: int  # users built by this call
    progress: SegmentProgress | None  # None: another task moved the segment; this one stops

    @property
    def finished(self) -> bool:
        return self.progress is None or self.progress.done


def backfill_segment(stores: Stores, total: int, segment: int, budget_seconds: float) -> SegmentStep:
    """Build the users of segment ``segment`` of ``total`` from where it got to, page by page,
    until it is done or ``budget_seconds`` have passed (the caller then hands the rest on)."""
    progress = stores.backfill_progress
    state: SegmentProgress | None = progress.get(total, segment)
    deadline, built = time.monotonic() + budget_seconds, 0
    while state is not None and not state.done:
        users, resume = stores.table.user_page(segment, total, state.resume, PAGE_ITEMS)
        for user_id in users:
            backfill_user(stores, user_id)
        state = progress.advance(state, resume, len(users))
        stores.metrics.backfill_users.inc(len(users))
        built += len(users)
        if time.monotonic() >= deadline:
            break  # at least one page a call, so every call moves the segment on
    if state is None:
        log.info("backfill segment %d/%d moved on by another task; this one stops", segment, total)
    return SegmentStep(built, state)


def backfill_user(stores: Stores, user_id: str) -> None:
    rebuild_durable(stores, user_id)
    if stores.cache.is_warm(user_id):  # its cache is read: make it right
        rebuild_cache(stores, user_id, keep_ttl=True)
