"""CPython's cyclic garbage collector, set for a consumer process.

CPython collects its young generation whenever the dicts, lists and other containers it tracks
have grown by a threshold since the last collection: 700 by default. A GetRecords answer of
1,000 records decodes into about 23,000 of them, which live until the batch is published, and
up to ``FEEDPIPE_SHARD_READ_CONCURRENCY`` answers are in flight. So, at the default, every answer
set off dozens of collections; its records survived them into the oldest generation, and full
collections walked every batch in flight again. In the ``shard_reads`` benchmark that was over a
quarter of the consumer's CPU (46 µs a record, against 33 with the threshold below).

None of it was garbage: a batch is freed by reference counting as soon as it is handled. So the
consumer collects once tracked objects have grown by about two full answers. What reference
counting cannot free, the few cycles its libraries make (a publish's retry policy, a client's
models), waits for that: at most 50,000 objects, a few megabytes.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# About two full GetRecords answers; the older generations keep their default ratios to it.
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
