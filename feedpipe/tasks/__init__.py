"""Thin Celery task wrappers over ``feedpipe.feeds``: decode payloads, classify errors, retry.

Task names and queues live in ``feedpipe.core.catalog``; they are re-exported here for callers
that send tasks by name.
"""

from feedpipe.core.catalog import (
    APPLY_FOLLOWS,
    AUDIT_SAMPLE,
    BACKFILL_SEGMENT,
    FANOUT_CHUNK,
    FANOUT_POSTS,
    REBUILD_ACTIVE,
    RECHECK_FOLLOWS,
    REGEN_DRAIN,
    REGEN_REBUILD,
    RETRACT_CHUNK,
    RETRACT_POSTS,
    TRIM_CACHES,
    TRIM_DURABLE,
)

__all__ = [
    "APPLY_FOLLOWS", "AUDIT_SAMPLE", "BACKFILL_SEGMENT", "FANOUT_CHUNK", "FANOUT_POSTS", "REBUILD_ACTIVE",
    "RECHECK_FOLLOWS", "REGEN_DRAIN", "REGEN_REBUILD", "RETRACT_CHUNK", "RETRACT_POSTS", "TRIM_CACHES", "TRIM_DURABLE",
]
