"""The regeneration drain, run by ``feedpipe beat`` every few seconds on the ``regen`` queue."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from feedpipe import tasks
from feedpipe.feeds.regen import drain
from feedpipe.runtime import runtime
from feedpipe.worker import REGEN_QUEUE, app

log = logging.getLogger(__name__)


@app.task(name=tasks.REGEN_DRAIN, queue=REGEN_QUEUE)
def drain_regen_queue() -> dict[str, Any]:
    stores = runtime().stores
    # Stay well inside the visibility timeout, so a live drain is never redelivered.
    budget = max(1.0, min(30.0, stores.settings.task_visibility_timeout_seconds / 3))
    stats = drain(stores, stores.regen_queue, budget)
    stores.metrics.regen_jobs.inc(stats.jobs)
    stores.metrics.regen_rebuilds.inc(stats.rebuilds)
    if stats.jobs or stats.recovered:
        log.info("regen drain: %s", stats)
    return asdict(stats)
