"""The storage a feed operation works on, passed down from the process that built it.

Each store is typed by the small interface the rules use (``feeds.ports``): the real adapters
are built in ``services.build_stores``, in-memory ones in ``feeds.memory.memory_stores``. How a
post is written into feeds is not theirs: it is ``format``, the one ``core.formats.FeedFormat``
built from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from feedpipe.adapters.dead_letters import DeadLetters
from feedpipe.adapters.regen_queue import RegenQueue
from feedpipe.config import Settings
from feedpipe.core.formats import FeedFormat
from feedpipe.feeds.ports import AuthorLists, BackfillSegments, CachedFeeds, Cursors, FeedTableLike, HugeAuthors
from feedpipe.metrics import Metrics


@dataclass
class Stores:
    table: FeedTableLike
    cache: CachedFeeds
    dead_letters: DeadLetters
    settings: Settings
    regen_queue: RegenQueue
    metrics: Metrics
    author_posts: AuthorLists
    huge_authors: HugeAuthors
    cursors: Cursors
    backfill_progress: BackfillSegments
    format: FeedFormat

    @property
    def excluded(self) -> frozenset[str]:
        return self.settings.excluded_visibilities


def feed_format(settings: Settings) -> FeedFormat:
    return FeedFormat(settings.member_format, settings.durable_feed_ttl_days)
