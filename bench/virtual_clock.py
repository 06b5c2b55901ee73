"""Simulated time for benchmarks: threads that take turns in the order of a virtual clock.

Why a virtual clock and not real time: a million-follower fan-out at 40,000 WCU/s is 50
seconds of DynamoDB time, but feedpipe's client-side CPU for a million items is minutes on
these two shared cores; in real time the run would measure this machine's CPU, not DynamoDB.
Here time advances only by what is modelled (a call's latency, a backoff), so the figures are
DynamoDB's and the client's CPU is reported beside them, as a separate number.

How concurrency stays honest: every simulated worker is a real thread running feedpipe's real
code, but only one holds the baton at a time. A thread that makes a DynamoDB call (or backs
off) sleeps in virtual time: it queues itself at ``now + latency`` and hands the baton to the
earliest sleeper. So calls reach the model in virtual-time order, capacity is spent in the order
DynamoDB would see it, and N threads each waiting 10 ms overlap exactly as N connections would.
CPU work between calls takes no virtual time (as if each worker had a core of its own).

A thread may block only in the clock (``sleep``, ``park``): a simulated thread waiting on a
real lock held by another simulated thread would deadlock, so feedpipe runs here with
``write_concurrency = 1`` and concurrency comes from more simulated workers instead.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any


class VirtualClock:
    def __init__(self) -> None:
        self._now = 0.0
        self._sleepers: list[tuple[float, int, threading.Event]] = []
        self._order = itertools.count()
        self._idle = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        """Called by the thread holding the baton: wake ``seconds`` later in virtual time."""
        woken = threading.Event()
        self.wake_at(woken, self._now + max(0.0, seconds))
        self._switch()
        woken.wait()

    def park(self, woken: threading.Event) -> None:
        """Give up the baton until someone calls ``wake_at(woken, ...)``."""
        self._switch()
        woken.wait()

    def wake_at(self, woken: threading.Event, at: float) -> None:
        heapq.heappush(self._sleepers, (max(at, self._now), next(self._order), woken))

    def spawn(self, fn: Callable[[], object], name: str) -> None:
        """A simulated thread that starts at the current virtual time."""
        start = threading.Event()

        def body() -> None:
            start.wait()
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported by run()
                self.errors.append(exc)
            finally:
                self._switch()

        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        self.wake_at(start, self._now)

    def run(self, timeout: float = 3600.0) -> None:
        """From a thread outside the simulation: run until no simulated thread can go on."""
        self._idle.clear()
        self._switch()
        if not self._idle.wait(timeout):
            raise TimeoutError("simulation still running")
        if self.errors:
            raise self.errors[0]

    def _switch(self) -> None:
        if not self._sleepers:
            self._idle.set()  # every thread is parked or finished
            return
        at, _, woken = heapq.heappop(self._sleepers)
        self._now = at
        woken.set()


@contextlib.contextmanager
def sleeps_in(clock: VirtualClock) -> Iterator[None]:
    """Make botocore's retry sleeps, tenacity's backoffs and feedpipe's task-budget deadlines
    run on ``clock`` for the duration (module globals, restored after)."""
    import botocore.endpoint
    import tenacity.nap

    import feedpipe.feeds.fanout

    shim = types.SimpleNamespace(sleep=clock.sleep, monotonic=clock.now, time=time.time,
                                 perf_counter=time.perf_counter)
    modules: list[Any] = [botocore.endpoint, tenacity.nap, feedpipe.feeds.fanout]
    originals = [module.time for module in modules]
    for module in modules:
        module.time = shim
    try:
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.time = original
