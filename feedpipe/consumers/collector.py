"""CPython's cyclic garbage collector, set for a consumer process.

A GetRecords answer of 1,000 records decodes into about 23,000 dicts and lists, which live
until the batch is published, and up to ``FEEDPIPE_SHARD_READ_CONCURRENCY`` answers are in
flight at once. At the default threshold (a young collection every 700 allocations), those
batches survive into the older generations, and full collections walk every one of them again
and again: in the ``shard_reads`` benchmark that was about a third of the consumer's CPU.

None of it is cyclic garbage: a batch is freed by reference counting as soon as it is handled.
So the consumer collects less often; the few cycles its libraries make (a retry's closures, a
client's models) wait a little longer, tens of thousands of allocations, to be freed.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# Young collections every 50,000 allocations, about two full GetRecords answers; the older
# generations keep their default ratios to it.
YOUNG_GENERATION_THRESHOLD = 50_000


@contextlib.contextmanager
def tuned_collector() -> Iterator[None]:
    """Around a consumer's run (``feedpipe consume``); the thresholds are set back after it."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*before)
