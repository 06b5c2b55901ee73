"""How feedpipe writes a post into feeds, built once from settings: the cached member and its
score (``core.members``), and the durable items in DynamoDB's wire form (``core.items``).

Every store, rule and audit formats through one ``FeedFormat``, so what fan-out writes and what
a rebuild or the audit expects cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from feedpipe.core.entries import CacheEntry
from feedpipe.core.events import Post
from feedpipe.core.items import Item, feed_item_template, feed_items
from feedpipe.core.members import MemberFormat, encode_member, member_score
from feedpipe.core.timestamps import format_timestamp


@dataclass(frozen=True, slots=True)
class FeedFormat:
    member_format: MemberFormat = MemberFormat.FULL
    durable_ttl_days: int = 0  # 0: feed items never expire

    def member(self, post: Post) -> str:
        return encode_member(post, self.member_format)

    def entry(self, post: Post) -> CacheEntry:
        return CacheEntry(member_score(post), self.member(post))

    def item_template(self, post: Post) -> Item:
        """The attributes every follower's item of ``post`` shares, stamped now (and given
        its expiry when items expire)."""
        now = datetime.now(UTC)
        ttl = None
        if self.durable_ttl_days:
            ttl = int((now + timedelta(days=self.durable_ttl_days)).timestamp())
        return feed_item_template(post, format_timestamp(now), ttl)

    def items(self, user_ids: Iterable[str], post: Post) -> Iterator[Item]:
        """``post``'s durable item in each of ``user_ids``' feeds."""
        return feed_items(user_ids, post, self.item_template(post))
