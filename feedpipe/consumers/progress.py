"""What the consumer keeps about each shard it holds, and the totals of what it has done."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from feedpipe.adapters.leases import SHARD_END
from feedpipe.adapters.streams import ReadResult, Shard
from feedpipe.consumers.pipeline import RecordCounts


@dataclass
class ShardState:
    """One held shard. A pool thread reading it sets ``iterator``; nothing else touches the
    state until that read is handed back to the consumer's thread."""

    shard: Shard
    checkpoint: str | None = None
    iterator: str | None = None
    checkpointed_at: float = field(default_factory=time.monotonic)
    failures: int = 0  # AWS errors in a row on this shard
    resume_at: float = 0.0  # monotonic time before which the shard is not read again

    def checkpoint_age(self) -> float:
        return time.monotonic() - self.checkpointed_at

    @property
    def finished(self) -> bool:
        return self.checkpoint == SHARD_END


@dataclass(frozen=True)
class Pinned:
    """What a first start at LATEST found: the checkpoint after the shard's newest record."""

    checkpoint: str
    passed: int


Fetched = ReadResult | Pinned


@dataclass
class ConsumerTotals(RecordCounts):
    checkpoints: int = 0
    rounds: int = 0
