"""Which shards this consumer works on: leases taken, renewed, balanced and handed back.

Every few seconds a consumer renews the leases it holds (a lease it cannot renew was taken:
its shard is dropped), and then looks for work: free leases and expired ones (a counter that
has not moved for ``failover_seconds``, as observed here) are taken up to a fair share; if
none is free and this consumer holds fewer than its share, it steals one from the busiest.
A shard is taken only once its parents have ended. Finished parents' leases are deleted once
every child has started.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from feedpipe.adapters.leases import LATEST, SHARD_END, Lease, LeaseLostError
from feedpipe.adapters.streams import Shard

log = logging.getLogger(__name__)


class Leases(Protocol):
    def list(self) -> dict[str, Lease]: ...
    def create(self, shard_id: str, parent_ids: tuple[str, ...], checkpoint: str | None = None) -> bool: ...
    def take(self, lease: Lease, owner: str) -> Lease | None: ...
    def renew(self, lease: Lease, owner: str) -> Lease | None: ...
    def checkpoint(self, lease: Lease, owner: str, checkpoint: str, last_record_ms: int | None) -> Lease: ...
    def release(self, lease: Lease, owner: str) -> bool: ...
    def delete_finished(self, shard_id: str) -> bool: ...


@dataclass
class LeaseCoordinator:
    leases: Leases
    owner: str
    failover_seconds: float = 10.0
    start_at_latest: bool = False  # FEEDPIPE_INITIAL_POSITION=LATEST
    clock: Callable[[], float] = time.monotonic
    held: dict[str, Lease] = field(default_factory=dict)
    _seen: dict[str, tuple[int, float]] = field(default_factory=dict)  # shard -> (counter, since)
    unheld_ready: int = 0  # ready shards another consumer (alive or not yet known dead) holds
    fair_share: int | None = None  # ready shards / live consumers, rounded up; None before the first look
    balanced: bool = False  # holds its share, or nothing is left for it to take or steal
    _next_renew: float = float("-inf")
    _next_take: float = float("-inf")

    def sync(self, shards: Iterable[Shard]) -> None:
        """Create leases for shards found for the first time; not for ancestors of a shard that
        has a lease (they ended, and their leases were cleaned up: the stream keeps listing
        closed shards for a day). On the stream's very first start (no lease at all) with
        ``start_at_latest``, the shards listed then begin at their newest record, as KCL's
        initial position: a closed one is done, an open one waits for its holder to find its
        newest record. Any shard found later (a split's children) starts at TRIM_HORIZON."""
        shards = list(shards)
        known = self.leases.list()
        parents = {shard.shard_id: shard.parent_ids for shard in shards}
        for lease in known.values():
            parents.setdefault(lease.shard_id, lease.parent_ids)
        ended: set[str] = set()
        pending = [p for shard_id in known for p in parents.get(shard_id, ())]
        while pending:
            ancestor = pending.pop()
            if ancestor not in ended:
                ended.add(ancestor)
                pending.extend(parents.get(ancestor, ()))
        first_start = self.start_at_latest and not known
        for shard in shards:
            if shard.shard_id not in known and shard.shard_id not in ended:
                self.leases.create(shard.shard_id, shard.parent_ids, _initial(shard) if first_start else None)

    def tick(self) -> set[str]:
        """Renew and take leases when due; returns the shards this consumer lost."""
        now = self.clock()
        lost: set[str] = set()
        if now >= self._next_renew:
            lost = self._renew()
            self._next_renew = now + self.failover_seconds / 3
        if now >= self._next_take:
            self._take()
            self._next_take = now + self.failover_seconds / 2
        return lost

    def checkpoint(self, shard_id: str, checkpoint: str, last_record_ms: int | None) -> None:
        """Move the shard's checkpoint; LeaseLostError (and the shard dropped) if taken."""
        if shard_id not in self.held:
            raise LeaseLostError(f"lease of shard {shard_id} is no longer held")
        try:
            self.held[shard_id] = self.leases.checkpoint(self.held[shard_id], self.owner, checkpoint, last_record_ms)
        except LeaseLostError:
            self.held.pop(shard_id, None)
            raise
        if self.held[shard_id].finished:
            self.leases.release(self.held.pop(shard_id), self.owner)  # done: free for cleanup
            self._next_take = float("-inf")  # its children are ready now: look at once

    def release_all(self) -> None:
        """Hand every lease back at once (SIGTERM): others take them without waiting."""
        for lease in list(self.held.values()):
            self.leases.release(lease, self.owner)
        self.held.clear()

    def _renew(self) -> set[str]:
        lost = set()
        for shard_id, lease in list(self.held.items()):
            renewed = self.leases.renew(lease, self.owner)
            if renewed is None:
                lost.add(shard_id)
                del self.held[shard_id]
                log.warning("lease of shard %s was taken by another consumer", shard_id)
            else:
                self.held[shard_id] = renewed
        return lost

    def _take(self) -> None:
        known = self.leases.list()
        self._observe(known)
        self._clean_up(known)
        ready = [lease for lease in known.values() if self._ready(lease, known)]
        alive = {lease.owner for lease in ready if lease.owner and not self._expired(lease)}
        share = math.ceil(len(ready) / len(alive | {self.owner})) if ready else 0
        wanted = share - len(self.held)
        free = [lease for lease in ready if lease.shard_id not in self.held and self._free(lease)]
        for lease in free[: max(wanted, 0)]:
            self._grab(lease, "free" if lease.owner is None else f"expired from {lease.owner}")
        if wanted > 0 and not free:
            self._steal(ready, share)
        self.unheld_ready = sum(1 for lease in ready if lease.shard_id not in self.held)
        self.fair_share = share
        self.balanced = self._is_balanced(ready, free, share)

    def _is_balanced(self, ready: list[Lease], free: list[Lease], share: int) -> bool:
        """What readiness asks: at its share, or short of it only because no lease is left to
        take and nobody holds more than the share (4 shards over 3 consumers settle at 2, 2, 0:
        the balancer steals only from a consumer above the share)."""
        if len(self.held) >= share:
            return True
        if any(lease.shard_id not in self.held for lease in free):
            return False
        load = Counter(lease.owner for lease in ready if lease.shard_id not in self.held and lease.owner)
        return max(load.values(), default=0) <= share

    def _steal(self, ready: list[Lease], share: int) -> None:
        load = Counter(lease.owner for lease in ready if lease.owner and lease.owner != self.owner)
        if load:
            busiest, count = load.most_common(1)[0]
            if count > share:
                victim = next(lease for lease in ready if lease.owner == busiest)
                self._grab(victim, f"stolen from {busiest} ({count} > {share})")

    def _grab(self, lease: Lease, why: str) -> None:
        taken = self.leases.take(lease, self.owner)
        if taken is not None:
            self.held[lease.shard_id] = taken
            log.info("took lease of shard %s (%s), checkpoint %s", lease.shard_id, why, lease.checkpoint)

    def _observe(self, known: dict[str, Lease]) -> None:
        """Note when each lease's counter last moved; forget leases no longer in the table
        (finished parents cleaned up), or a long-lived consumer on a stream that reshards
        keeps one entry for every shard it ever saw."""
        now = self.clock()
        for shard_id in self._seen.keys() - known.keys():
            del self._seen[shard_id]
        for shard_id, lease in known.items():
            counter, _ = self._seen.get(shard_id, (None, now))
            if counter != lease.counter:
                self._seen[shard_id] = (lease.counter, now)

    def _expired(self, lease: Lease) -> bool:
        _, since = self._seen.get(lease.shard_id, (lease.counter, self.clock()))
        return self.clock() - since >= self.failover_seconds

    def _free(self, lease: Lease) -> bool:
        """Takeable (for a lease this consumer does not hold): nobody's, expired, or recorded
        as ours, which happens when a renew or take succeeded but its answer was lost. No other
        consumer takes that one while we keep it from expiring, so we must take it back."""
        return lease.owner is None or lease.owner == self.owner or self._expired(lease)

    @staticmethod
    def _ready(lease: Lease, known: dict[str, Lease]) -> bool:
        """Unfinished, and every parent ended (or its lease already cleaned up)."""
        return not lease.finished and all(p not in known or known[p].finished for p in lease.parent_ids)

    def _clean_up(self, known: dict[str, Lease]) -> None:
        """Delete a finished parent's lease once all its children have checkpointed."""
        children: dict[str, list[Lease]] = {}
        for lease in known.values():
            for parent in lease.parent_ids:
                children.setdefault(parent, []).append(lease)
        for shard_id, lease in known.items():
            kids = children.get(shard_id, [])
            if lease.finished and kids and all(k.checkpoint for k in kids):
                self.leases.delete_finished(shard_id)


def _initial(shard: Shard) -> str:
    return SHARD_END if shard.closed else LATEST
