"""Every Celery task feedpipe runs: its name, its queue, and the task each stream event goes to.

The one place routing is written. The worker's tasks, the consumer's dispatch, beat's
schedule, ``dlq replay``, the queue-depth metrics and Celery's ``task_routes`` all read it, so
a message is routed by its task's name whoever sends it. Pure: no Celery, no I/O.
"""

from __future__ import annotations

from types import MappingProxyType

from feedpipe.core.events import FollowEnded, FollowStarted, PostPublished, PostRetracted

# -- queues: one per kind of work, so a backed-up fan-out never delays a follow ---------------

FANOUT_QUEUE = "fanout"
# Fan-out chunks (durable writes, paced by the table's capacity) apart from the planners, whose
# walk writes warm feeds first: a planner is never queued behind a huge post's chunks.
FANOUT_CHUNK_QUEUE = "fanout_chunks"
RETRACT_QUEUE = "retract"
FOLLOWS_QUEUE = "follows"
REGEN_TASK_QUEUE = "regen"  # the Celery queue of regeneration tasks, not the app's feed_regen_queue list
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (FANOUT_QUEUE, FANOUT_CHUNK_QUEUE, RETRACT_QUEUE, FOLLOWS_QUEUE, REGEN_TASK_QUEUE, MAINTENANCE_QUEUE)

# -- task names: the consumer sends tasks by these names ----------------------------------------

FANOUT_POSTS = "feedpipe.fanout.posts"
FANOUT_CHUNK = "feedpipe.fanout.chunk"
RETRACT_POSTS = "feedpipe.retract.posts"
RETRACT_CHUNK = "feedpipe.retract.chunk"
APPLY_FOLLOWS = "feedpipe.follows.apply"
RECHECK_FOLLOWS = "feedpipe.follows.recheck"
REGEN_DRAIN = "feedpipe.regen.drain"
REGEN_REBUILD = "feedpipe.regen.rebuild"
TRIM_CACHES = "feedpipe.maintenance.trim_caches"
TRIM_DURABLE = "feedpipe.maintenance.trim_durable"
REBUILD_ACTIVE = "feedpipe.maintenance.rebuild_active"
AUDIT_SAMPLE = "feedpipe.audit.sample"
BACKFILL_SEGMENT = "feedpipe.backfill.segment"

TASK_QUEUES = MappingProxyType({
    FANOUT_POSTS: FANOUT_QUEUE,
    FANOUT_CHUNK: FANOUT_CHUNK_QUEUE,
    RETRACT_POSTS: RETRACT_QUEUE,
    RETRACT_CHUNK: RETRACT_QUEUE,
    APPLY_FOLLOWS: FOLLOWS_QUEUE,
    RECHECK_FOLLOWS: FOLLOWS_QUEUE,
    REGEN_DRAIN: REGEN_TASK_QUEUE,
    REGEN_REBUILD: REGEN_TASK_QUEUE,
    TRIM_CACHES: MAINTENANCE_QUEUE,
    TRIM_DURABLE: MAINTENANCE_QUEUE,
    REBUILD_ACTIVE: MAINTENANCE_QUEUE,
    AUDIT_SAMPLE: MAINTENANCE_QUEUE,
    BACKFILL_SEGMENT: MAINTENANCE_QUEUE,
})

# The task each event parsed from a stream record goes to.
EVENT_TASKS = MappingProxyType({
    PostPublished.kind: FANOUT_POSTS,
    PostRetracted.kind: RETRACT_POSTS,
    FollowStarted.kind: APPLY_FOLLOWS,
    FollowEnded.kind: APPLY_FOLLOWS,
})

# Tasks that dead-letter the one payload they failed on, which ``dlq replay`` can send again;
# the scheduled ones (drain, trims, rebuild, audit) simply run again on their next tick.
REPLAYABLE_TASKS = frozenset({
    FANOUT_POSTS, FANOUT_CHUNK, RETRACT_POSTS, RETRACT_CHUNK, APPLY_FOLLOWS, RECHECK_FOLLOWS, REGEN_REBUILD,
    BACKFILL_SEGMENT,
})


def task_routes() -> dict[str, dict[str, str]]:
    """Celery's ``task_routes`` setting: every task to its queue, by name."""
    return {name: {"queue": queue} for name, queue in TASK_QUEUES.items()}
