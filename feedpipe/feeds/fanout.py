"""Fan-out of a new post to every follower, and its retraction, in chunks across tasks.

The planner streams the author's followers page by page (never loading them whole) and hands
every full chunk to another task through ``hand_out``; the last chunk it delivers itself, so a
small audience costs one task. A walk that has run for ``task_budget_seconds`` stops after a
page and goes on from there in a fresh planner task (``hand_on``), so no task outlives the
broker's visibility timeout however big the audience: each task's time is bounded, the
whole fan-out's time grows with the audience, and memory holds one page and one chunk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

from feedpipe.core.events import Post
from feedpipe.core.messages import Resume
from feedpipe.core.planning import unique
from feedpipe.feeds import fanout_on_read
from feedpipe.feeds.delivery import add_post, post_is_live, remove_post, settle_post
from feedpipe.feeds.stores import Stores

HandOut = Callable[[list[str]], None]
log = logging.getLogger(__name__)


HandOn = Callable[[Resume], None]


def walk_audience(
    stores: Stores,
    author_id: str,
    deliver: Callable[[list[str]], object],
    hand_out: HandOut,
    resume: Resume | None = None,
    hand_on: HandOn | None = None,
) -> int | None:
    """Split the author's followers into chunks: full ones handed out, the rest delivered here.
    Returns the audience size, or None when the walk was handed on (``hand_on`` given and the
    budget spent): then every follower walked so far is handed out, and the rest is the next
    task's."""
    size = stores.settings.fanout_chunk_size
    deadline = time.monotonic() + stores.settings.task_budget_seconds
    buffer: list[str] = []
    total = resume.walked if resume else 0
    pages = stores.table.follower_pages_from(author_id, stores.settings.follower_page_size,
                                              resume.start if resume else None)
    for page, last in pages:
        buffer.extend(page)
        total += len(page)
        while len(buffer) > size:
            hand_out(buffer[:size])
            del buffer[:size]
        if last and hand_on is not None and time.monotonic() > deadline:
            if buffer:
                hand_out(buffer)
            hand_on(Resume(last, total))
            return None
    if buffer:
        deliver(buffer)
    return total


def fan_out_post(
    stores: Stores, post: Post, hand_out: HandOut, resume: Resume | None = None, hand_on: HandOn | None = None
) -> int:
    """Start (or, with ``resume``, go on) delivering a published post; a post no longer live is
    skipped (its retraction, or a later publish, owns it). A huge author's post goes to their
    list instead. Returns the audience once the walk is complete, else 0."""
    if not post_is_live(stores, post.post_id):
        return 0
    if resume is None and fanout_on_read.is_huge(stores, post.author_id):
        fanout_on_read.publish(stores, post)
        log.info("post %s by huge author %s kept for fan-out-on-read", post.post_id, post.author_id,
                 extra={"post_id": post.post_id})
        return 0
    audience = walk_audience(stores, post.author_id, partial(deliver_chunk, stores, post), hand_out, resume, hand_on)
    if audience is None:
        log.info("fan-out of post %s handed on after a page", post.post_id, extra={"post_id": post.post_id})
        return 0
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


def retract_post(
    stores: Stores, post: Post, hand_out: HandOut, resume: Resume | None = None, hand_on: HandOn | None = None
) -> int:
    """Take a deleted or hidden post out of every follower's feed, and out of its author's
    fan-out-on-read list; a post live again is left to the publish that revived it. Followers'
    feeds are walked even for a huge author: posts pushed before the promotion, and follow
    backfills, are there. Returns the audience once the walk is complete, else 0."""
    if post_is_live(stores, post.post_id):
        return 0
    if resume is None:
        fanout_on_read.retract(stores, post)
    return walk_audience(stores, post.author_id, partial(retract_chunk, stores, post), hand_out, resume, hand_on) or 0


def retract_chunk(stores: Stores, post: Post, followers: list[str]) -> None:
    audience = set(followers)
    remove_post(stores, post, audience)
    settle_post(stores, post, present=set(), absent=audience)
