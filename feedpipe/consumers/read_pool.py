"""Reading many shards at once in one consumer process.

A GetRecords call is mostly a wait on the network (tens of milliseconds), so a consumer holding
hundreds of shards spends most of a round waiting if it reads them one after another. The pool
overlaps those waits: up to ``concurrency`` reads are in flight, each of a different shard.
Everything else stays on the consumer's own thread: parsing, publishing to the broker (a Celery
producer is not made to be shared between threads), checkpointing and the leases. It takes the
reads as they finish, every read finished by then at once, so the batches of shards read
together can be published together. A shard's batches are still published in order, and
checkpointed only once published, exactly as when it read one shard after another.

At most ``concurrency`` batches are read or being read and not yet handled, plus one, so memory
stays bounded by the setting, not by the number of shards.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class ReadPool:
    """Threads that run reads; ``concurrency`` 1 runs each read on the caller's thread, when the
    caller asks for its result (reading one shard after another, as before there was a pool)."""

    def __init__(self, concurrency: int, name: str = "shard-read") -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self._name = name
        self._executor: ThreadPoolExecutor | None = None

    def __enter__(self) -> ReadPool:
        if self.concurrency > 1:  # threads start lazily, on the first read
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix=self._name)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    @contextlib.contextmanager
    def read_each(
        self, items: Sequence[Item], read: Callable[[Item], Result]
    ) -> Iterator[Iterator[list[tuple[Item, Callable[[], Result]]]]]:
        """Start ``read(item)`` for every item; yields the reads as they finish, in groups: each
        group every read finished by the time the caller asks for the next (at least one), as
        ``(item, outcome)`` pairs, where ``outcome()`` returns the read's result or raises its
        exception. A caller slower than the reads gets them in bigger groups, to handle together.

        Each item is read once. Leaving the block, however it is left, cancels the reads not
        started and waits for those running: none outlives it, so the next round can never read
        an item a thread is still reading."""
        if self._executor is None:
            yield ([(item, functools.partial(read, item))] for item in items)
            return
        running: dict[Future[Result], Item] = {}
        handed: dict[Future[Result], Item] = {}  # handed to the caller, outcome not yet asked for
        try:
            yield self._as_finished(self._executor, items, read, running, handed)
        finally:
            for future in running:
                future.cancel()
            wait(running)
            ending = sys.exc_info()[1]  # the error the round ends on, if any: the caller's to report
            for future, item in {**handed, **running}.items():  # the round ended before these were handled
                error = None if future.cancelled() else future.exception()
                if error is not None and error is not ending:
                    log.warning("read of %s left unhandled when the round ended: %r", item, error)

    def _as_finished(
        self,
        executor: ThreadPoolExecutor,
        items: Sequence[Item],
        read: Callable[[Item], Result],
        running: dict[Future[Result], Item],
        handed: dict[Future[Result], Item],
    ) -> Iterator[list[tuple[Item, Callable[[], Result]]]]:
        waiting = iter(items)

        def start(count: int) -> None:
            for item in itertools.islice(waiting, count):
                running[executor.submit(read, item)] = item

        start(self.concurrency)
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            finished = [future for future in running if future in done]  # in the order they started
            group: list[tuple[Item, Callable[[], Result]]] = [
                (running.pop(f), functools.partial(_outcome, handed, f)) for f in finished
            ]
            handed.update(zip(finished, (item for item, _ in group), strict=True))
            start(1)  # keep the network busy while the caller handles these
            yield group
            start(len(group) - 1)  # and only then the rest: memory stays bounded by the setting


def _outcome(handed: dict[Future[Result], Item], future: Future[Result]) -> Result:
    """A finished read's result (or its error raised), now the caller's to handle."""
    handed.pop(future, None)
    return future.result()
