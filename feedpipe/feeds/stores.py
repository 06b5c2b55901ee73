"""The storage a feed operation works on, passed down from the process that built it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

from feedpipe.adapters.author_posts import AuthorPosts
from feedpipe.adapters.dead_letters import DeadLetters
from feedpipe.adapters.dynamo import FeedTable
from feedpipe.adapters.huge_authors import HugeAuthorTable
from feedpipe.adapters.redis_feeds import FeedCache
from feedpipe.adapters.regen_queue import RegenQueue
from feedpipe.config import Settings
from feedpipe.core.events import Post
from feedpipe.core.items import Item, feed_item_template
from feedpipe.core.keys import OwnKeys
from feedpipe.core.members import encode_member
from feedpipe.core.timestamps import format_timestamp
from feedpipe.metrics import Metrics


@dataclass
class Stores:
    table: FeedTable
    cache: FeedCache
    dead_letters: DeadLetters
    settings: Settings
    regen_queue: RegenQueue
    metrics: Metrics

    @property
    def excluded(self) -> frozenset[str]:
        return self.settings.excluded_visibilities

    @cached_property
    def author_posts(self) -> AuthorPosts:
        """Fan-out-on-read's Redis lists, on the feed cache's connection."""
        s = self.settings
        return AuthorPosts(self.cache.client, OwnKeys(s.key_prefix), s.feed_max_length, s.author_posts_ttl_seconds)

    @cached_property
    def huge_authors(self) -> HugeAuthorTable:
        return HugeAuthorTable(self.table)

    def member(self, post: Post) -> str:
        return encode_member(post, self.settings.member_format)

    def item_template(self, post: Post) -> Item:
        now = datetime.now(UTC)
        ttl = None
        if self.settings.durable_feed_ttl_days:
            ttl = int((now + timedelta(days=self.settings.durable_feed_ttl_days)).timestamp())
        return feed_item_template(post, format_timestamp(now), ttl)
