"""Fan-out of a new post to every follower, and its retraction, in chunks across tasks.

The planner streams the author's followers page by page (never loading them whole) and hands
every full chunk to another task through ``hand_out``; the last chunk it delivers itself, so a
small audience costs one task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from feedpipe.core.events import Post
from feedpipe.core.planning import unique
from feedpipe.feeds import fanout_on_read
from feedpipe.feeds.delivery import add_post, post_is_live, remove_post, settle_post
from feedpipe.feeds.stores import Stores

HandOut = Callable[[list[str]], None]
log = logging.getLogger(__name__)


def walk_audience(
    stores: Stores, author_id: str, deliver: Callable[[list[str]], object], hand_out: HandOut
) -> int:
    """Split the author's followers into chunks: full ones handed out, the rest delivered here.
    Returns the audience size."""
    size = stores.settings.fanout_chunk_size
    buffer: list[str] = []
    total = 0
    for page in stores.table.follower_pages(author_id, stores.settings.follower_page_size):
        buffer.extend(page)
        total += len(page)
        while len(buffer) > size:
            hand_out(buffer[:size])
            del buffer[:size]
    if buffer:
        deliver(buffer)
    return total


def fan_out_post(stores: Stores, post: Post, hand_out: HandOut) -> int:
    """Start delivering a published post; a post no longer live is skipped (its retraction,
    or a later publish, owns it). A huge author's post goes to their list instead (returns 0)."""
    if not post_is_live(stores, post.post_id):
        return 0
    if fanout_on_read.is_huge(stores, post.author_id):
        fanout_on_read.publish(stores, post)
        log.info("post %s by huge author %s kept for fan-out-on-read", post.post_id, post.author_id,
                 extra={"post_id": post.post_id})
        return 0
    audience = walk_audience(stores, post.author_id, lambda c: deliver_chunk(stores, post, c), hand_out)
    stores.metrics.fanout_followers.observe(audience)
    log.info("fan-out of post %s by %s: %d followers", post.post_id, post.author_id, audience,
             extra={"post_id": post.post_id})
    return audience


def deliver_chunk(stores: Stores, post: Post, followers: list[str]) -> int:
    audience = unique(followers)
    written = add_post(stores, post, audience)
    settle_post(stores, post, present=set(audience), absent=set())
    stores.metrics.fanout_latency_seconds.observe(max(0.0, time.time() - post.created_at_ms / 1000))
    return written


def retract_post(stores: Stores, post: Post, hand_out: HandOut) -> int:
    """Take a deleted or hidden post out of every follower's feed, and out of its author's
    fan-out-on-read list; a post live again is left to the publish that revived it. Followers'
    feeds are walked even for a huge author: posts pushed before the promotion, and follow
    backfills, are there."""
    if post_is_live(stores, post.post_id):
        return 0
    fanout_on_read.retract(stores, post)
    return walk_audience(stores, post.author_id, lambda c: retract_chunk(stores, post, c), hand_out)


def retract_chunk(stores: Stores, post: Post, followers: list[str]) -> None:
    audience = set(followers)
    remove_post(stores, post, audience)
    settle_post(stores, post, present=set(), absent=audience)
