"""What ``/healthz`` (live: restart me if not) and ``/readyz`` (ready: count me in) mean for each
long-running process.

Each process keeps a ``Heartbeat`` that its own loop beats; a loop that has not come around
within a bound derived from the settings is stalled (hung on a socket, deadlocked), and only a
restart helps. Readiness asks more: that the process is doing its share of the work now.
Every check reads plain state (timestamps, counters) that its loop writes, so a probe never
blocks on the thing it judges.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from feedpipe.config import Settings

Clock = Callable[[], float]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


class Probe(Protocol):
    def live(self) -> Verdict: ...
    def ready(self) -> Verdict: ...


@dataclass
class Heartbeat:
    """When a loop last came around (monotonic seconds); never beaten reads as just started."""

    clock: Clock = time.monotonic
    at: float = field(default=0.0)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.at = self.clock()

    def beat(self) -> None:
        with self._lock:
            self.at = self.clock()

    def age(self) -> float:
        with self._lock:
            return max(0.0, self.clock() - self.at)


def check_heartbeat(heartbeat: Heartbeat, bound: float, what: str) -> Verdict:
    age = round(heartbeat.age(), 1)
    if age > bound:
        return Verdict(False, f"{what} stalled: no progress for {age}s (bound {bound:.0f}s)", {"stalled_seconds": age})
    return Verdict(True, f"{what} running", {"last_progress_seconds": age})


class LeaseView(Protocol):
    """What the consumer probe reads from a ``LeaseCoordinator``."""

    held: dict[str, Any]
    fair_share: int | None
    balanced: bool


@dataclass
class ConsumerProbe:
    """Live while the consumer's loop comes around (backing off through an outage counts: a
    restart would not end it). Ready when rounds finish (reads, publishes and checkpoints go
    through) and it holds at least its fair share of the ready shards' leases."""

    loop: Heartbeat  # beaten on every pass of the loop, backoff waits included
    rounds: Heartbeat  # beaten when a round finished
    leases: LeaseView
    stall_seconds: float

    def live(self) -> Verdict:
        return check_heartbeat(self.loop, self.stall_seconds, "consumer loop")

    def ready(self) -> Verdict:
        progress = check_heartbeat(self.rounds, self.stall_seconds, "consumer rounds")
        if not progress.ok:
            return progress
        held, share = len(self.leases.held), self.leases.fair_share
        details = {"leases_held": held, "fair_share": share}
        if share is None:
            return Verdict(False, "has not looked at the lease table yet", details)
        if not self.leases.balanced:
            return Verdict(False, f"holds {held} leases, fewer than its fair share of {share}", details)
        return Verdict(True, f"holds {held} leases (fair share {share}); rounds progressing", details)


@dataclass
class BeatProbe:
    """Beat is a leader (holds the lock and schedules) or a standby (waits for the lock); both
    are ready. Live while the loop of whichever it is comes around."""

    heartbeat: Heartbeat
    stall_seconds: float
    role: str = "starting"  # "standby" or "leader" once run_beat has begun

    def live(self) -> Verdict:
        return check_heartbeat(self.heartbeat, self.stall_seconds, f"beat ({self.role})")

    def ready(self) -> Verdict:
        verdict = self.live()
        if not verdict.ok:
            return verdict
        if self.role == "leader":
            return Verdict(True, "holds the beat lock and schedules", {"role": self.role})
        if self.role == "standby":
            return Verdict(True, "waiting for the beat lock as a standby", {"role": self.role})
        return Verdict(False, "not started", {"role": self.role})


@dataclass
class WorkerProbe:
    """A prefork worker's main process. Ready once it consumes and its broker answers. Live
    while its event loop comes around and no child has run a task past the visibility timeout:
    by then the broker has handed the message to another worker, and the child is stuck (a hung
    socket, a deadlock)."""

    loop_stall: Callable[[], float | None]  # seconds since the event loop came around; None: not running
    loop_stall_seconds: float
    stuck_after_seconds: float
    running: Callable[[], Iterable[tuple[str, float]]]  # (task name, seconds running) of each child's task
    broker_error: Callable[[], str | None]  # None when the broker answers
    consuming: Callable[[], bool]

    def live(self) -> Verdict:
        stalled = self.loop_stall()
        if stalled is not None and stalled > self.loop_stall_seconds:
            return Verdict(False, f"worker event loop stalled: no progress for {stalled:.1f}s "
                                  f"(bound {self.loop_stall_seconds:.0f}s)", {"stalled_seconds": round(stalled, 1)})
        stuck = sorted((round(age, 1), name) for name, age in self.running() if age > self.stuck_after_seconds)
        if stuck:
            age, name = stuck[-1]
            return Verdict(False, f"{len(stuck)} task(s) stuck: {name} running for {age}s "
                                  f"(visibility timeout {self.stuck_after_seconds:.0f}s)", {"stuck_tasks": len(stuck)})
        loop = {} if stalled is None else {"last_progress_seconds": round(stalled, 1)}
        return Verdict(True, "event loop running; no task past the visibility timeout", loop)

    def ready(self) -> Verdict:
        if not self.consuming():
            return Verdict(False, "not consuming from the broker yet")
        error = self.broker_error()
        if error is not None:
            return Verdict(False, f"broker unreachable: {error}")
        return Verdict(True, "consuming; broker answers")


def consumer_stall_seconds(settings: Settings) -> float:
    """A consumer loop renews its leases every pass: one that has not come around for three
    failover periods has lost its shards to others already. Never under a minute, so a slow
    GetRecords or a full batch's publish is not taken for a hang."""
    return max(60.0, 3 * settings.lease_failover_seconds, 10 * settings.idle_poll_seconds)


def beat_stall_seconds(settings: Settings) -> float:
    """Beat renews its lock every third of the lock's TTL and ticks at least every
    ``BEAT_MAX_LOOP_SECONDS``; three missed lock periods mean the process is hung."""
    return max(60.0, 3.0 * settings.beat_lock_seconds)
