"""The app's ``feed_regen_queue``, drained reliably.

Each drain takes jobs from the queue's tail with LMOVE into a processing list of its own, and
registers a lease (a deadline in a sorted set) that it renews while it works. It deletes the
list only when every job in it is done. A drain that dies leaves its list and an expiring lease;
the next drain moves that list's jobs back onto the queue's tail, where they are taken first.
All these keys share the queue's cluster slot (see ``keys.REGEN_SLOT_TAG``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from feedpipe.adapters.redis_client import RedisClient
from feedpipe.core.keys import REGEN_QUEUE, OwnKeys


class RegenQueue:
    def __init__(self, client: RedisClient, own: OwnKeys, lease_seconds: int) -> None:
        self.client = client
        self.own = own
        self.lease_seconds = lease_seconds

    def depth(self) -> int:
        return int(self.client.llen(REGEN_QUEUE))

    def processing_depth(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for drain_id in self._drains("-inf", "+inf"):
            pipe.llen(self.own.regen_processing(drain_id))
        return sum(int(n) for n in pipe.execute())

    def open_drain(self) -> str:
        drain_id = uuid.uuid4().hex
        self.renew(drain_id)
        return drain_id

    def renew(self, drain_id: str) -> None:
        self.client.zadd(self.own.regen_drains, {drain_id: time.time() + self.lease_seconds})

    def take(self, drain_id: str, count: int) -> list[bytes]:
        """Move up to ``count`` jobs from the queue's tail into this drain's processing list."""
        pipe = self.client.pipeline(transaction=False)
        for _ in range(count):
            pipe.lmove(REGEN_QUEUE, self.own.regen_processing(drain_id), "RIGHT", "LEFT")
        return [job for job in pipe.execute() if job is not None]

    def finish(self, drain_id: str) -> None:
        """Every job this drain took is done: forget them and the lease."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.own.regen_processing(drain_id))
        pipe.zrem(self.own.regen_drains, drain_id)
        pipe.execute()

    def recover_stranded(self) -> int:
        """Put back the jobs of drains whose lease ran out (their worker died); returns how many."""
        moved = 0
        for drain_id in self._drains("-inf", time.time()):
            source = self.own.regen_processing(drain_id)
            while self.client.lmove(source, REGEN_QUEUE, "LEFT", "RIGHT") is not None:
                moved += 1
            self.client.zrem(self.own.regen_drains, drain_id)
        return moved

    def _drains(self, low: float | str, high: float | str) -> list[str]:
        found = self.client.zrangebyscore(self.own.regen_drains, low, high)
        return [d.decode() if isinstance(d, bytes) else str(d) for d in found]

    def push(self, jobs: Sequence[str | bytes]) -> None:
        """Queue jobs as the app does (LPUSH); used by ``dlq replay``."""
        if jobs:
            self.client.lpush(REGEN_QUEUE, *jobs)
