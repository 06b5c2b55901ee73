"""Finding a shard's newest record, for a first start at ``FEEDPIPE_INITIAL_POSITION=LATEST``.

A LATEST iterator would be simpler, but it is no position: a consumer killed before its first
checkpoint would start again at a later LATEST and lose what came in between. So the holder of
a shard reads it once from its oldest record to its tip without dispatching anything, and
checkpoints the last sequence number it saw (a shard with no record yet is read from its start:
everything in it will be new). Records that arrive during the walk and are passed over came
before the pin: the backfill, started after it, covers them.
"""

from __future__ import annotations

from feedpipe.adapters.leases import SHARD_END, TRIM_HORIZON
from feedpipe.adapters.streams import ShardSource
from feedpipe.core.records import record_sequence


def find_newest(source: ShardSource, shard_id: str, limit: int) -> tuple[str, int]:
    """The checkpoint that starts ``shard_id`` after its newest record now, and how many
    records were passed over to find it."""
    iterator: str | None = source.iterator(shard_id, None)
    newest, passed = TRIM_HORIZON, 0
    while iterator is not None:
        result = source.read(iterator, limit)
        if result.records:
            newest, passed = record_sequence(result.records[-1]), passed + len(result.records)
        if result.next_iterator is None:
            return SHARD_END, passed  # it closed meanwhile: all of it came before the start
        if len(result.records) < limit and not result.millis_behind:
            return newest, passed
        iterator = result.next_iterator
    return newest, passed
