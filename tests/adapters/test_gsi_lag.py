"""GSI1 lag (``gsi_lag.LaggingGsi``): the two ways it used to leave a feed wrong, reproduced, and
the follow's re-check (``recheck_follow``, scheduled ``2 * gsi_lag_seconds`` after the follow's
task) putting each right. On moto and fakeredis; tasks run by hand at the times given."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest

import feedpipe.services
import feedpipe.tasks.follows as follow_tasks
from feedpipe import tasks
from feedpipe.config import load_settings
from feedpipe.core.events import FollowEnded, FollowStarted, Post, to_payload
from feedpipe.core.records import post_from_image
from feedpipe.dev.appsim import AppWriter
from feedpipe.feeds.follows import apply_follow, recheck_follow
from feedpipe.feeds.stores import Stores
from feedpipe.services import Services, build_stores
from feedpipe.worker import WorkerApp
from tests.adapters.conftest import APP_TABLE, publish, retract
from tests.adapters.gsi_lag import LaggingGsi

LAG = 2.0
AUTHOR, USER = "alice", "una"


class World:
    def __init__(self, stores: Stores, app: AppWriter, gsi: LaggingGsi) -> None:
        self.stores, self.app, self.gsi = stores, app, gsi
        self._stamp = 0

    def at(self, when: float) -> None:
        self.gsi.advance(when - self.gsi.now)

    def follow(self) -> None:
        self.app.follow(USER, AUTHOR)
        self.gsi.wrote_follow(USER, AUTHOR)

    def post(self, post_id: str) -> Post:
        self._stamp += 1
        self.app.create_post(AUTHOR, f"user_{AUTHOR}", f"text of {post_id}", post_id=post_id,
                             created_at=f"2024-03-01T10:00:{self._stamp:02d}.000Z")
        image = self.stores.table.post_image(post_id)
        assert image is not None
        post = post_from_image(image)
        self.gsi.wrote_post(post)
        return post

    def feeds(self) -> tuple[list[str], list[str]]:
        """The user's durable and cached feeds, post ids newest first."""
        durable = [item["post_id"] for item in self.stores.table.feed_items(USER)]
        cached = [json.loads(e.member)["postId"] for e in self.stores.cache.members(USER)]
        return durable, cached


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, dynamodb: Any, tables: dict[str, str]) -> Iterator[World]:
    redis = fakeredis.FakeRedis()
    monkeypatch.setattr(feedpipe.services, "connect_redis", lambda url: redis)
    stores = build_stores(load_settings({"FEEDPIPE_TABLE_NAME": APP_TABLE}), dynamodb)
    app = AppWriter(dynamodb, redis, APP_TABLE, transactional=False)
    for user in (AUTHOR, USER):
        app.create_user(user)
    stores.cache.replace_feed(USER, [])  # the user's app is open: their feed is warm
    yield World(stores, app, LaggingGsi(stores.table, LAG))
    stores.table.close()
    redis.close()


def test_a_follow_and_a_post_within_the_lag_meet_at_the_recheck(world: World) -> None:
    world.follow()  # t = 0
    world.at(0.5)
    post = world.post("p1")
    world.at(0.6)
    publish(world.stores, post)  # the fan-out's walk does not see the new follower yet
    world.at(0.7)
    apply_follow(world.stores, USER, AUTHOR)  # nor does the backfill see the new post
    assert world.feeds() == ([], [])  # the known limit, reproduced

    world.at(0.7 + 2 * LAG)
    recheck_follow(world.stores, USER, AUTHOR)
    assert world.feeds() == (["p1"], ["p1"])


def test_a_post_deleted_while_the_retraction_missed_a_new_follower_leaves_at_the_recheck(world: World) -> None:
    post = world.post("p1")
    world.at(10.0)  # p1 is long in GSI1
    world.follow()
    world.at(10.1)
    apply_follow(world.stores, USER, AUTHOR)
    assert world.feeds() == (["p1"], ["p1"])
    world.at(10.5)
    world.app.delete_post("p1")
    world.at(10.6)
    retract(world.stores, post)  # the walk does not see the new follower yet
    assert world.feeds() == (["p1"], ["p1"])  # the known limit, reproduced

    world.at(10.1 + 2 * LAG)
    recheck_follow(world.stores, USER, AUTHOR)
    assert world.feeds() == ([], [])


def test_a_recheck_of_a_feed_the_backfill_completed_writes_nothing(world: World, dynamodb: Any) -> None:
    for n in range(3):
        world.post(f"p{n}")
    world.at(10.0)
    world.follow()
    world.at(10.1)
    assert apply_follow(world.stores, USER, AUTHOR) == 3
    world.at(10.1 + 2 * LAG)
    batch_writes: list[str] = []
    dynamodb.meta.events.register("before-call.dynamodb.BatchWriteItem", lambda **_: batch_writes.append("call"))

    assert recheck_follow(world.stores, USER, AUTHOR) == 0  # every post already there
    assert batch_writes == []  # a re-check of every follow must not double its write capacity
    assert world.feeds() == (["p2", "p1", "p0"], ["p2", "p1", "p0"])


def test_a_recheck_after_an_unfollow_leaves_the_author_out(world: World) -> None:
    world.post("p1")
    world.at(10.0)
    world.follow()
    apply_follow(world.stores, USER, AUTHOR)
    world.app.unfollow(USER, AUTHOR)
    world.at(10.0 + 2 * LAG)
    recheck_follow(world.stores, USER, AUTHOR)  # follows no more: the unmerge owns the feed
    assert world.feeds()[0] == ["p1"]  # untouched here; the unfollow's own task takes it out


# -- the follow task schedules the re-check ----------------------------------------------------


def _follow_task(monkeypatch: pytest.MonkeyPatch, lag: str, sent: list[dict[str, Any]]) -> Any:
    """The follow task of a worker app on ``lag``, whose sends are recorded in ``sent``."""
    services = Services(load_settings({"FEEDPIPE_GSI_LAG_SECONDS": lag}), _stores=SimpleNamespace())  # type: ignore[arg-type]
    app = WorkerApp(services=services)
    monkeypatch.setattr(app, "send_task", lambda name, **kw: sent.append({"name": name, **kw}))
    monkeypatch.setattr(follow_tasks, "apply_follow", lambda *args: 0)
    monkeypatch.setattr(follow_tasks, "apply_unfollow", lambda *args: 0)
    return app.tasks[tasks.APPLY_FOLLOWS]


@pytest.mark.parametrize(("lag", "countdown"), [("2", 4), ("0.5", 1), ("0.3", 1), ("0", None)])  # whole seconds
def test_a_follow_task_schedules_its_recheck_after_twice_the_lag(
    monkeypatch: pytest.MonkeyPatch, lag: str, countdown: float | None
) -> None:
    sent: list[dict[str, Any]] = []
    task = _follow_task(monkeypatch, lag, sent)
    follow = FollowStarted(USER, AUTHOR)
    follow_tasks._apply(task, follow, to_payload(follow))
    if countdown is None:
        assert sent == []
    else:
        assert sent == [{"name": "feedpipe.follows.recheck", "args": [[to_payload(follow)]], "countdown": countdown}]
        assert task.app.amqp.router.route({}, sent[0]["name"])["queue"].name == "follows"


# The default visibility timeout (600 s) gives a task budget of 150 s.
@pytest.mark.parametrize(("lag", "countdown"), [("2", 154), ("0.3", 151), ("0", 150)])  # whole seconds
def test_an_unfollow_task_schedules_its_recheck_after_twice_the_lag_and_a_task_budget(
    monkeypatch: pytest.MonkeyPatch, lag: str, countdown: int
) -> None:
    sent: list[dict[str, Any]] = []
    task = _follow_task(monkeypatch, lag, sent)
    unfollow = FollowEnded(USER, AUTHOR)
    follow_tasks._apply(task, unfollow, to_payload(unfollow))
    assert sent == [{"name": "feedpipe.follows.recheck", "args": [[to_payload(unfollow)]], "countdown": countdown}]


def test_an_unfollow_recheck_runs_the_unmerge_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recheck task runs the unfollow's unmerge again (the race itself is forced in
    ``test_race_warm_first``): the author's posts leave the feed of a user who follows no more."""
    unmerged: list[tuple[str, str]] = []
    monkeypatch.setattr(follow_tasks, "recheck_unfollow", lambda _s, user, author: unmerged.append((user, author)))
    task = _follow_task(monkeypatch, "2", [])
    unfollow = FollowEnded(USER, AUTHOR)
    follow_tasks._recheck(task, unfollow, to_payload(unfollow))
    assert unmerged == [(USER, AUTHOR)]
