"""The continuous sampled audit beat schedules once a minute: a few random users' feeds
compared with the table, and repaired unless ``FEEDPIPE_AUDIT_REPAIR`` is off."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from feedpipe import tasks
from feedpipe.adapters.user_scan import sample_users
from feedpipe.feeds.repair import audit_users
from feedpipe.tasks.base import FeedpipeTask

log = logging.getLogger(__name__)


def audit_sample(self: FeedpipeTask, count: int | None = None) -> dict[str, Any]:
    stores = self.services.stores
    settings = stores.settings
    wanted = settings.audit_sample_per_minute if count is None else count
    users = sample_users(self.services.dynamodb, settings.table_name, wanted)
    summary = audit_users(stores, users, repair=settings.audit_repair)
    for user in summary.drifted:
        log.warning("audit: drift in %s's feed: %s", user.user_id, user.as_dict())
    return {
        "audited": summary.users,
        "drifted": [u.user_id for u in summary.drifted],
        "unrepaired": summary.unrepaired,
    }


# The worker app runs it as a bound task of this name (``worker.WorkerApp``).
TASKS: dict[str, Callable[..., object]] = {tasks.AUDIT_SAMPLE: audit_sample}
