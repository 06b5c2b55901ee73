"""Draining ``feed_regen_queue``: each user's jobs coalesced into one rebuild.

A follow or unfollow job rebuilds the cached feed; ``rebuild``/``regenerate`` also repairs the
durable feed first. Jobs are acknowledged (their processing list deleted) only when done: when
rebuilt here, or, with a ``hand_out``, when their rebuilds are handed to tasks that the broker
holds (as fan-out chunks are), so a big batch spreads over every worker instead of running in
one. A drain that dies first leaves its jobs to be recovered and redone, which is harmless:
rebuilds are idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from feedpipe.adapters.regen_queue import RegenQueue
from feedpipe.core.letters import DeadLetter
from feedpipe.core.planning import chunked
from feedpipe.core.regen import JobError, RegenJob, coalesce, parse_job
from feedpipe.feeds.rebuild import HandOnRebuild, RebuildResume, rebuild_cache, rebuild_durable
from feedpipe.feeds.stores import Stores

log = logging.getLogger(__name__)

DURABLE_ACTIONS = frozenset({"rebuild", "regenerate"})
DEAD_LETTER_SOURCE = "regen"

Rebuild = tuple[str, bool]  # (user_id, whether the durable feed is repaired first)
HandOut = Callable[[list[Rebuild]], None]


@dataclass
class DrainStats:
    jobs: int = 0
    rebuilds: int = 0
    dead_lettered: int = 0
    recovered: int = 0


def drain(stores: Stores, queue: RegenQueue, budget_seconds: float, hand_out: HandOut | None = None) -> DrainStats:
    """Take jobs, a batch at a time, until the queue is empty or the budget is spent; rebuild
    here, or hand the rebuilds out in groups of ``regen_users_per_task``."""
    stats = DrainStats(recovered=queue.recover_stranded())
    if stats.recovered:
        log.warning("recovered %d regeneration jobs from a drain that died", stats.recovered)
    deadline = time.monotonic() + budget_seconds
    while time.monotonic() < deadline:
        drain_id = queue.open_drain()
        taken = queue.take(drain_id, stores.settings.regen_batch)
        if taken:
            _do_batch(stores, queue, drain_id, taken, stats, hand_out)
        queue.finish(drain_id)
        if len(taken) < stores.settings.regen_batch:
            break
    return stats


def _do_batch(
    stores: Stores, queue: RegenQueue, drain_id: str, taken: list[bytes], stats: DrainStats, hand_out: HandOut | None
) -> None:
    jobs: list[RegenJob] = []
    letters: list[DeadLetter] = []
    for raw in taken:
        try:
            jobs.append(parse_job(raw, stores.settings.regen_actions))
        except JobError as exc:
            letters.append(DeadLetter(DEAD_LETTER_SOURCE, str(exc), _printable(raw)))
    stores.dead_letters.add_many(letters)
    durable = {job.user_id for job in jobs if job.action in DURABLE_ACTIONS}
    users = coalesce(jobs)
    rebuilds = [(user_id, user_id in durable) for user_id in users]
    if hand_out is None:
        rebuild_users(stores, rebuilds, done=lambda: queue.renew(drain_id))
    else:
        for group in chunked(rebuilds, stores.settings.regen_users_per_task):
            hand_out(group)
            queue.renew(drain_id)
    stats.jobs += len(taken)
    stats.rebuilds += len(users)
    stats.dead_lettered += len(letters)


def rebuild_users(stores: Stores, rebuilds: Iterable[Rebuild], done: Callable[[], object] = lambda: None) -> None:
    """Rebuild each user's cache, repairing the durable feed first where asked."""
    for user_id, durable in rebuilds:
        rebuild_user(stores, user_id, durable)
        done()


def rebuild_user(
    stores: Stores, user_id: str, durable: bool, resume: RebuildResume | None = None,
    hand_on: HandOnRebuild | None = None,
) -> bool:
    """Repair the durable feed first where asked (going on from ``resume``; over budget, handed
    on with ``hand_on``), then the cache; whether the rebuild finished here. A durable repair
    handed on leaves the cache to the task that finishes it."""
    if durable and rebuild_durable(stores, user_id, resume, hand_on).handed_on:
        return False
    rebuild_cache(stores, user_id)
    return True


def _printable(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # dead letters keep bytes as base64
