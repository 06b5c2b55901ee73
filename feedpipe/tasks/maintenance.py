"""Scheduled upkeep: cap cached feeds, trim durable feeds, refresh active users' caches.

The long sweeps resume from a cursor kept in Redis, so each run is short and a crash costs at
most one slice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from feedpipe import tasks
from feedpipe.core.keys import WALK_START
from feedpipe.feeds.rebuild import rebuild_cache
from feedpipe.feeds.trimming import sweep_cached_feeds, sweep_durable_feeds
from feedpipe.tasks.base import FeedpipeTask

log = logging.getLogger(__name__)

ACTIVE_REBUILD_SLICE_SECONDS = 20.0
ACTIVE_SCAN_COUNT = 200


def trim_caches(self: FeedpipeTask, cursor: str = WALK_START) -> dict[str, Any]:
    """One budgeted stretch of the cache sweep; the rest goes on in a fresh message from the
    cursor it reached (beat starts each sweep with none)."""
    stores = self.services.stores
    stats = sweep_cached_feeds(stores.cache, stores.settings.feed_max_length,
                               cursor=str(cursor), budget_seconds=stores.settings.task_budget_seconds)
    if stats.next_cursor != WALK_START:
        self.app.send_task(tasks.TRIM_CACHES, args=[stats.next_cursor])
    log.info("cache trim sweep: %s", stats)
    return asdict(stats)


def trim_durable(self: FeedpipeTask) -> dict[str, Any]:
    services = self.services
    stores, key = services.stores, services.own_keys.durable_trim_cursor
    if not stores.settings.durable_feed_max_items:
        return {"skipped": "FEEDPIPE_DURABLE_FEED_MAX_ITEMS=0"}
    raw = stores.cursors.load(key)
    cursor = json.loads(raw) if raw else None
    sweep = sweep_durable_feeds(stores.table, stores.settings.durable_feed_max_items, cursor=cursor)
    if sweep.next_cursor is None:
        stores.cursors.clear(key)
    else:
        stores.cursors.save(key, json.dumps(sweep.next_cursor))
        self.app.send_task(tasks.TRIM_DURABLE)  # the next slice
    log.info("durable trim slice: %s", sweep)
    return asdict(sweep)


def rebuild_active(self: FeedpipeTask) -> dict[str, int | str]:
    """Rebuild warm caches from durable feeds, keeping each key's TTL: repairs drift without
    keeping inactive users warm."""
    services = self.services
    stores, key = services.stores, services.own_keys.active_rebuild_cursor
    cursor = stores.cursors.load(key) or WALK_START
    budget = min(ACTIVE_REBUILD_SLICE_SECONDS, stores.settings.task_budget_seconds)
    deadline, rebuilt = time.monotonic() + budget, 0
    while time.monotonic() < deadline:
        cursor, found = stores.cache.warm_users_page(cursor, ACTIVE_SCAN_COUNT)
        for user_id in found:
            rebuild_cache(stores, user_id, keep_ttl=True)
            rebuilt += 1
        if cursor == WALK_START:
            break
    if cursor != WALK_START:
        stores.cursors.save(key, cursor)
        self.app.send_task(tasks.REBUILD_ACTIVE)
    else:
        stores.cursors.clear(key)
    return {"rebuilt": rebuilt, "cursor": cursor}


# The worker app runs each as a bound task of this name (``worker.WorkerApp``).
TASKS: dict[str, Callable[..., object]] = {
    tasks.TRIM_CACHES: trim_caches,
    tasks.TRIM_DURABLE: trim_durable,
    tasks.REBUILD_ACTIVE: rebuild_active,
}
