"""The storage a feed operation works on, passed down from the process that built it.

Each store is typed by the small interface the rules use (``feeds.ports``): the real adapters
are built in ``services.build_stores``, in-memory ones in ``feeds.memory.memory_stores``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from feedpipe.adapters.dead_letters import DeadLetters
from feedpipe.adapters.regen_queue import RegenQueue
from feedpipe.config import Settings
from feedpipe.core.events import Post
from feedpipe.core.items import Item, feed_item_template
from feedpipe.core.members import encode_member
from feedpipe.core.timestamps import format_timestamp
from feedpipe.feeds.ports import AuthorLists, CachedFeeds, Cursors, FeedTableLike, HugeAuthors
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

    @property
    def excluded(self) -> frozenset[str]:
        return self.settings.excluded_visibilities

    def member(self, post: Post) -> str:
        return encode_member(post, self.settings.member_format)

    def item_template(self, post: Post) -> Item:
        now = datetime.now(UTC)
        ttl = None
        if self.settings.durable_feed_ttl_days:
            ttl = int((now + timedelta(days=self.settings.durable_feed_ttl_days)).timestamp())
        return feed_item_template(post, format_timestamp(now), ttl)
