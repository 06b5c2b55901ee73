"""Fan-out of a new post to every follower, and its retraction, in chunks across tasks.

The planner streams the author's followers page by page (never loading them whole) and hands
every full chunk to another task through ``hand_out``; the last chunk it delivers itself, so a
small audience costs one task. A walk that has run for ``task_budget_seconds`` stops after a
page and goes on from there in a fresh planner task (``hand_on``), so no task outlives the
broker's visibility timeout however big the audience, and memory holds one page and one chunk.

A huge audience is walked by several planners at once: given ``split``, a planner that still
has more to walk after a page hands the upper part of its segment of followers to a new planner
(``core.follower_segments``), so the walkers double each page up to ``fanout_max_walkers``.

Warm first: a fan-out planner writes each chunk it hands out into the chunk's warm Redis feeds
before it sends the chunk, so warm feeds have the post as fast as the walk goes, whatever the
durable writes wait for. The chunk's task then writes durable and the cache again (the same
member: no change) and settles; that settle runs after the early cache write, so a post deleted
or a follower gone meanwhile leaves the cache as it leaves the durable feed, and a cache rebuild
still finds a cache write after every durable write (``feeds.rebuild``).

A planner that dies after a warm write and before it sends that chunk (or after the writes of
its own last chunk, before their settle) leaves nothing to settle that write but its own
message, run again. A second attempt that finds its post no longer live therefore sweeps its
range as a retraction does (``sweep``): the delete's retraction may have walked past those
followers before the early write. A first attempt skips: the retraction owns the post. (A
follower who unfollowed meanwhile is listed by no walk any more: the unfollow's own re-check,
a task budget later, takes the post out: ``feeds.follows.recheck_unfollow``.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from feedpipe.core import keys
from feedpipe.core.events import Post
from feedpipe.core.follower_segments import Segment
from feedpipe.core.items import Key
from feedpipe.core.messages import Resume
from feedpipe.core.planning import unique
from feedpipe.feeds import fanout_on_read
from feedpipe.feeds.delivery import add_post, post_is_live, remove_post, settle_post
from feedpipe.feeds.stores import Stores

HandOut = Callable[[list[str]], None]
HandOn = Callable[[Resume], None]
Split = Callable[[Segment], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Handoffs:
    """Where a walk sends what it does not do itself: full chunks, the rest of a walk that spent
    its budget, the upper part of a split segment."""

    hand_out: HandOut
    hand_on: HandOn | None = None
    split: Split | None = None


def walk_audience(
    stores: Stores,
    author_id: str,
    deliver: Callable[[list[str]], object],
    hand_out: HandOut,
    resume: Resume | None = None,
    hand_on: HandOn | None = None,
    segment: Segment | None = None,
    split: Split | None = None,
) -> int | None:
    """Split the author's followers (those of ``segment``, or of the resumed walk's segment)
    into chunks: full ones handed out, the rest delivered here. Returns how many were walked,
    or None when the walk was handed on (``hand_on`` given and the budget spent): then every
    follower walked so far is handed out, and the rest is the next task's."""
    size = stores.settings.fanout_chunk_size
    deadline = time.monotonic() + stores.settings.task_budget_seconds
    buffer: list[str] = []
    total = resume.walked if resume else 0
    first = (resume.segment if resume else segment) or Segment(share=stores.settings.fanout_max_walkers)
    for page, last, now_in in _pages(stores, author_id, resume.start if resume else None, first, split):
        buffer.extend(page)
        total += len(page)
        while len(buffer) > size:
            hand_out(buffer[:size])
            del buffer[:size]
        if last and hand_on is not None and time.monotonic() > deadline:
            if buffer:
                hand_out(buffer)
            hand_on(Resume(last, total, now_in))
            return None
    if buffer:
        deliver(buffer)
    return total


def _pages(
    stores: Stores, author_id: str, start: Key | None, segment: Segment, split: Split | None
) -> Iterator[tuple[list[str], Key | None, Segment]]:
    """The segment's pages, each with where it ended and the segment it belongs to. After a page
    that leaves more to walk, with ``split`` given, the rest is halved: the upper part goes to
    ``split``, and the walk goes on in the lower part (the page is yielded with it)."""
    page_size = stores.settings.follower_page_size
    while True:
        for page, last in stores.table.follower_pages_from(author_id, page_size, start, segment):
            halves = _halves(stores, author_id, segment, last) if last and split else None
            if halves:  # before the page's chunks go out: the new walker starts the sooner
                segment, upper = halves
                split(upper)  # type: ignore[misc]  # checked above
            yield page, last, segment
            if halves:
                start = last
                break
        else:
            return


def _halves(stores: Stores, author_id: str, segment: Segment, last: Key) -> tuple[Segment, Segment] | None:
    if segment.share < 2:
        return None
    after = keys.strip_prefix(last["GSI1SK"]["S"], keys.FOLLOWER_PREFIX)
    top = stores.table.last_follower(author_id, segment)
    return segment.split(after, top) if after and top else None


def starts_walk(resume: Resume | None, segment: Segment | None) -> bool:
    """Whether a planner message is its post's first: not a walk handed on, nor split off."""
    return resume is None and segment is None


def fan_out_post(
    stores: Stores,
    post: Post,
    hand_out: HandOut,
    resume: Resume | None = None,
    hand_on: HandOn | None = None,
    segment: Segment | None = None,
    split: Split | None = None,
    sweep: Handoffs | None = None,
) -> int:
    """Start (or, with ``resume`` or ``segment``, go on) delivering a published post; a post no
    longer live is skipped (its retraction, or a later publish, owns it). A huge author's post
    goes to their list instead. Returns the followers walked (or swept) once the walk (of this
    segment) is complete, else 0.

    ``sweep``, given when this message ran before, is how a retraction hands its work out: a
    second attempt that finds the post no longer live takes it out of its range's feeds with
    it, as an earlier attempt may have written some (module doc). A huge author's too: they
    may have been promoted since that attempt walked."""
    if not post_is_live(stores, post.post_id):
        if sweep is None:
            return 0
        log.info("post %s no longer live on a second attempt: sweeping its walk", post.post_id,
                 extra={"post_id": post.post_id})
        stores.metrics.crash_repairs.labels("sweep").inc()
        return retract_post(stores, post, sweep.hand_out, resume, sweep.hand_on, segment, sweep.split)
    if starts_walk(resume, segment) and fanout_on_read.is_huge(stores, post.author_id):
        fanout_on_read.publish(stores, post)
        log.info("post %s by huge author %s kept for fan-out-on-read", post.post_id, post.author_id,
                 extra={"post_id": post.post_id})
        return 0
    audience = walk_audience(stores, post.author_id, partial(deliver_chunk, stores, post),
                             partial(_warm_then, stores, post, hand_out), resume, hand_on, segment, split)
    if audience is None:
        log.info("fan-out of post %s handed on after a page", post.post_id, extra={"post_id": post.post_id})
        return 0
    stores.metrics.fanout_followers.observe(audience)
    log.info("fan-out of post %s by %s: %d followers", post.post_id, post.author_id, audience,
             extra={"post_id": post.post_id})
    return audience


def _warm_then(stores: Stores, post: Post, hand_out: HandOut, followers: list[str]) -> None:
    """Write the post into the chunk's warm feeds, then hand the chunk out: its task's settle
    comes after this write, and covers it."""
    stores.cache.add_to_warm_feeds(followers, stores.format.entry(post))
    stores.metrics.fanout_warm_latency_seconds.observe(_since(post))
    hand_out(followers)


def deliver_chunk(stores: Stores, post: Post, followers: list[str]) -> int:
    audience = unique(followers)
    written = add_post(stores, post, audience)
    settle_chunk(stores, post, audience)
    return written


def settle_chunk(stores: Stores, post: Post, audience: list[str]) -> None:
    """After a chunk's writes (and the planner's warm write before them), take the post back out
    of the feeds of those it is not due to (deleted, or no longer followed)."""
    settle_post(stores, post, present=set(audience), absent=set())
    stores.metrics.fanout_latency_seconds.observe(_since(post))


def _since(post: Post) -> float:
    return max(0.0, time.time() - post.created_at_ms / 1000)


def retract_post(
    stores: Stores,
    post: Post,
    hand_out: HandOut,
    resume: Resume | None = None,
    hand_on: HandOn | None = None,
    segment: Segment | None = None,
    split: Split | None = None,
) -> int:
    """Take a deleted or hidden post out of every follower's feed, and out of its author's
    fan-out-on-read list; a post live again is left to the publish that revived it. Followers'
    feeds are walked even for a huge author: posts pushed before the promotion, and follow
    backfills, are there. Returns the followers walked once the walk (of this segment) is
    complete, else 0."""
    if post_is_live(stores, post.post_id):
        return 0
    if starts_walk(resume, segment):
        fanout_on_read.retract(stores, post)
    walked = walk_audience(stores, post.author_id, partial(retract_chunk, stores, post), hand_out, resume, hand_on,
                           segment, split)
    return walked or 0


def retract_chunk(stores: Stores, post: Post, followers: list[str]) -> None:
    audience = set(followers)
    remove_post(stores, post, audience)
    settle_post(stores, post, present=set(), absent=audience)
