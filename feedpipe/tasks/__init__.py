"""Thin Celery task wrappers over ``feedpipe.feeds``: decode payloads, classify errors, retry."""

# Task names, the one place they are spelled; the consumer sends tasks by these names.
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
