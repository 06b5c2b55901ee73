"""A fan-out whose walk of the followers outlasts the task budget goes on in fresh planner tasks,
on the in-memory stores (held to moto and fakeredis by ``test_store_contract``): every follower
gets the post exactly once, chunks stay chunk-sized, and a post deleted between two planner
tasks stops the walk and leaves every feed. A walk split across planners (segments of
follower ids, read with GSI1SK BETWEEN) does the same on moto and fakeredis, and its
planners write warm feeds before any chunk runs.

The task budget is the visibility timeout / 4; time here is a fake clock that moves 1 s on each
look, so a planner stops after about one page. 23 followers, pages of 4, chunks of 5.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

import feedpipe.feeds.fanout as fanout_module
from feedpipe.config import load_settings
from feedpipe.core.events import Post
from feedpipe.core.follower_segments import Segment
from feedpipe.core.records import post_from_image
from feedpipe.feeds.fanout import Resume, deliver_chunk, fan_out_post, retract_chunk, retract_post
from feedpipe.feeds.memory import memory_stores
from feedpipe.feeds.stores import Stores
from tests.memory_app import memory_app

from .conftest import APP_TABLE

FOLLOWERS = [f"fan{i:02d}" for i in range(23)]
CHUNK, PAGE = 5, 4


class Planner:
    """Runs a planner and every planner it hands on to, collecting the chunks handed out."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.chunks: list[list[str]] = []
        self.resumes: list[Resume] = []
        self.tasks = 0

    def publish(self, post: Post, between: Any = lambda: None) -> None:
        self._run(lambda r: fan_out_post(self.stores, post, self.chunks.append, r, self.resumes.append), between)
        for chunk in self.chunks:
            deliver_chunk(self.stores, post, chunk)

    def retract(self, post: Post) -> None:
        self._run(lambda r: retract_post(self.stores, post, self.chunks.append, r, self.resumes.append))
        for chunk in self.chunks:
            retract_chunk(self.stores, post, chunk)

    def _run(self, plan: Any, between: Any = lambda: None) -> None:
        self.chunks, self.resumes = [], []
        plan(None)
        self.tasks = 1
        while self.resumes:
            between()
            plan(self.resumes.pop(0))
            self.tasks += 1


@pytest.fixture
def stores(monkeypatch: pytest.MonkeyPatch) -> Stores:
    clock = [0.0]

    def look() -> float:
        clock[0] += 1.0
        return clock[0]

    monkeypatch.setattr(fanout_module, "time", SimpleNamespace(monotonic=look, time=lambda: 1.7e9))
    settings = load_settings({
        "FEEDPIPE_TABLE_NAME": APP_TABLE,
        "FEEDPIPE_FANOUT_CHUNK_SIZE": str(CHUNK),
        "FEEDPIPE_FOLLOWER_PAGE_SIZE": str(PAGE),
        "FEEDPIPE_WRITE_CONCURRENCY": "1",
        "FEEDPIPE_TASK_VISIBILITY_TIMEOUT_SECONDS": "4",  # budget 1 s
    })
    s = memory_stores(settings)
    app = memory_app(s, APP_TABLE)
    for user in ["star", *FOLLOWERS]:
        app.create_user(user)
    for user in FOLLOWERS:
        app.follow(user, "star")
    s.app = app  # type: ignore[attr-defined]
    return s


def new_post(stores: Stores, post_id: str) -> Post:
    stores.app.create_post("star", "user_star", f"text of {post_id}", post_id=post_id,  # type: ignore[attr-defined]
                           created_at="2024-03-01T10:00:00.000Z")
    image = stores.table.post_image(post_id)
    assert image is not None
    return post_from_image(image)


def holders(stores: Stores, post_id: str) -> Counter[str]:
    """Followers whose durable feed holds ``post_id``, with how many times."""
    return Counter(u for u in FOLLOWERS for i in stores.table.feed_items(u) if i["post_id"] == post_id)


def test_a_walk_over_budget_goes_on_in_fresh_tasks_and_reaches_everyone_once(stores):
    post = new_post(stores, "p1")
    planner = Planner(stores)
    audience = stores.metrics.fanout_followers
    before = (audience._sum.get(), sum(b.get() for b in audience._buckets))  # the registry may be shared

    planner.publish(post)

    assert planner.tasks >= 3, "the walk was never handed on"
    handed = [f for chunk in planner.chunks for f in chunk]
    assert len(set(handed)) == len(handed)  # no follower in two chunks (the last planner delivers the rest)
    assert all(len(chunk) <= CHUNK for chunk in planner.chunks)
    assert holders(stores, "p1") == Counter({u: 1 for u in FOLLOWERS})
    observed = (audience._sum.get() - before[0], sum(b.get() for b in audience._buckets) - before[1])
    assert observed == (len(FOLLOWERS), 1)  # observed once, for the whole walk


def test_a_post_deleted_between_two_planner_tasks_stops_the_walk_and_leaves_every_feed(stores):
    post = new_post(stores, "p1")
    planner = Planner(stores)
    deleted = []

    def delete_once() -> None:
        if not deleted:
            stores.app.delete_post("p1")  # type: ignore[attr-defined]
            deleted.append(True)

    planner.publish(post, between=delete_once)
    assert planner.tasks == 2  # the second planner found the post dead and stopped

    Planner(stores).retract(post)  # the delete's own record, walked over budget too

    assert holders(stores, "p1") == Counter()


class SplitPlanners:
    """Runs every planner message (the first, those handed on, those split off) in the order
    they were sent, collecting the chunks handed out."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.chunks: list[list[str]] = []
        self.segments: list[Segment] = []
        self.planners = 0

    def run(self, post: Post, walk: Any) -> None:
        messages: list[tuple[Resume | None, Segment | None]] = [(None, None)]

        def split(segment: Segment) -> None:
            self.segments.append(segment)
            messages.append((None, segment))

        while messages:
            resume, segment = messages.pop(0)
            walk(self.stores, post, self.chunks.append, resume, lambda r: messages.append((r, None)), segment, split)
            self.planners += 1


def test_a_walk_split_across_planners_warms_feeds_first_and_reaches_everyone_once(stores):
    warm = set(FOLLOWERS[::3])
    for user in warm:
        stores.cache.replace_feed(user, [])  # a regeneration made them warm: an empty feed, a marker
    post = new_post(stores, "p1")
    planners = SplitPlanners(stores)

    planners.run(post, fan_out_post)

    assert planners.segments and planners.planners > len(planners.segments) + 1, "never split, or never handed on"
    handed = [f for chunk in planners.chunks for f in chunk]
    assert len(set(handed)) == len(handed) and set(handed) | set(FOLLOWERS) == set(FOLLOWERS)
    for user in warm & set(handed):  # no chunk has run: the planners wrote these
        assert [e.member for e in stores.cache.members(user)] == [stores.format.member(post)]
    for chunk in planners.chunks:
        deliver_chunk(stores, post, chunk)
    assert holders(stores, "p1") == Counter({u: 1 for u in FOLLOWERS})
    assert all(stores.cache.is_warm(u) == (u in warm) for u in FOLLOWERS)
    assert all(len(stores.cache.members(u)) == 1 for u in warm)

    stores.app.delete_post("p1")  # type: ignore[attr-defined]
    retraction = SplitPlanners(stores)
    retraction.run(post, retract_post)
    for chunk in retraction.chunks:
        retract_chunk(stores, post, chunk)

    assert retraction.segments and holders(stores, "p1") == Counter()
    assert all(stores.cache.members(u) == [] and stores.cache.is_warm(u) for u in warm)
