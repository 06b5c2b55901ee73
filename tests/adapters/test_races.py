"""Forced interleavings of the feed operations (contract section 2, "Final state is what counts").

Every test runs the feed operations in-process against the in-memory stores (``feeds.memory``,
held to the real adapters' behaviour by ``test_store_contract``), in one thread, and puts the
other party's action (the app deleting a post, unfollowing, ...) at an exact point by wrapping
one store method. Tasks and handed-out chunks are run by hand, in the order the
scenario needs. Each test then checks what a user would see: the durable feed (``FEED#{user}``)
and the cached feed (``feed:{user}``) of every user involved.

The cast: ``alice`` is the author. ``bob`` and ``carol`` (warm feeds) and ``dave`` (cold feed)
follow her; ``erin`` (warm) and ``frank`` (cold) do not, yet. Every feed already holds ``OLD``,
a post by ``zoe`` that none of these operations may touch; warm feeds hold it in Redis too,
which keeps them warm, and cold feeds must never get a Redis key. The fan-out chunk size is 2,
so a three-follower fan-out hands one chunk out and delivers the remainder itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from feedpipe.config import load_settings
from feedpipe.core.events import Post
from feedpipe.core.records import post_from_image
from feedpipe.dev.appsim import AppWriter
from feedpipe.feeds.fanout import deliver_chunk, fan_out_post, retract_chunk, retract_post
from feedpipe.feeds.follows import apply_follow, apply_unfollow
from feedpipe.feeds.memory import memory_stores
from feedpipe.feeds.memory_cache import MemoryCache
from feedpipe.feeds.stores import Stores
from tests.adapters.conftest import inject, publish, retract
from tests.memory_app import memory_app

from .conftest import APP_TABLE

AUTHOR = "alice"
FOLLOWERS = ["bob", "carol", "dave"]
NEWCOMERS = ["erin", "frank"]
WARM = {"bob", "carol", "erin"}
CHUNK_SIZE = 2
OLD = "z_old"  # zoe's post, in every feed before each test


class World:
    """The app's table and cache, feedpipe's stores over them, and a few ways to drive both."""

    def __init__(self, stores: Stores, app: AppWriter) -> None:
        self.stores = stores
        self.app = app
        assert isinstance(stores.cache, MemoryCache)
        self.redis = stores.cache.space  # the cache's keys, as Redis holds them
        self._stamp = 0

    # -- the app's side ------------------------------------------------------------------------

    def new_post(self, post_id: str, author: str = AUTHOR) -> Post:
        """The app publishes a post; returns it as its INSERT record's NewImage carries it."""
        self._stamp += 1
        self.app.create_post(
            author, f"user_{author}", f"text of {post_id}", post_id=post_id,
            created_at=f"2024-03-01T10:00:{self._stamp:02d}.000Z",
        )
        return self.post(post_id)

    def post(self, post_id: str) -> Post:
        image = self.stores.table.post_image(post_id)
        assert image is not None
        return post_from_image(image)

    def undelete(self, post_id: str) -> None:
        """The app makes a soft-deleted post live again."""
        self.app.dynamodb.update_item(
            TableName=APP_TABLE,
            Key={"PK": {"S": f"POST#{post_id}"}, "SK": {"S": "METADATA"}},
            UpdateExpression="SET is_deleted = :f",
            ExpressionAttributeValues={":f": {"BOOL": False}},
        )

    # -- whole tasks, each with the chunks it hands out run right after it -------------------------

    def publish(self, post: Post) -> None:
        publish(self.stores, post)

    def retract(self, post: Post) -> None:
        retract(self.stores, post)

    def follow_task(self, follower: str) -> None:
        apply_follow(self.stores, follower, AUTHOR)

    def unfollow_task(self, follower: str) -> None:
        apply_unfollow(self.stores, follower, AUTHOR)

    # -- what a user sees ------------------------------------------------------------------------

    def durable(self, user: str) -> list[str]:
        """Post ids in ``FEED#{user}``, newest first."""
        return [item["post_id"] for item in self.stores.table.feed_items(user)]

    def cached(self, user: str) -> list[str] | None:
        """Post ids in ``feed:{user}``, newest first, as the app's getFeed parses them; None
        when the key does not exist (a cold feed)."""
        key = f"feed:{user}"
        if not self.redis.exists(key):
            return None
        return [json.loads(e.member)["postId"] for e in self.stores.cache.members(user)]

    def snapshot(self) -> dict[str, tuple[list[str], list[str] | None]]:
        return {u: (self.durable(u), self.cached(u)) for u in FOLLOWERS + NEWCOMERS}


def assert_feeds(world: World, expected: dict[str, list[str]]) -> None:
    """Each user's durable feed is exactly ``expected[user]`` (newest first); a warm user's
    cached feed is exactly the same; a cold user still has no cached feed at all."""
    for user, posts in expected.items():
        assert world.durable(user) == posts, f"durable feed of {user}"
        if user in WARM:
            assert world.cached(user) == posts, f"cached feed of {user} (warm)"
        else:
            assert world.cached(user) is None, f"cached feed of {user} became warm"


def everyone(*posts: str) -> dict[str, list[str]]:
    """Every user's expected feed when each holds ``posts`` (newest first) and zoe's OLD."""
    return {u: [*posts, OLD] for u in FOLLOWERS + NEWCOMERS}




@pytest.fixture
def world() -> Iterator[World]:
    settings = load_settings({
        "FEEDPIPE_TABLE_NAME": APP_TABLE,
        "FEEDPIPE_FANOUT_CHUNK_SIZE": str(CHUNK_SIZE),
        "FEEDPIPE_FOLLOWER_PAGE_SIZE": "3",
        "FEEDPIPE_WRITE_CONCURRENCY": "1",
    })
    stores = memory_stores(settings)
    w = World(stores, memory_app(stores, APP_TABLE))

    for user in [AUTHOR, "zoe", *FOLLOWERS, *NEWCOMERS]:
        w.app.create_user(user)
    for user in FOLLOWERS:
        w.app.follow(user, AUTHOR)
    old = w.new_post(OLD, author="zoe")
    for user in FOLLOWERS + NEWCOMERS:
        w.app.follow(user, "zoe")
        stores.table.put_items(stores.format.items([user], old))
        if user in WARM:
            stores.cache.replace_feed(user, [stores.format.entry(old)])
    assert_feeds(w, everyone())
    yield w


# -- 1. a post deleted while its fan-out runs ----------------------------------------------------


def test_post_deleted_between_fan_out_write_and_settle_check_ends_in_no_feed(world, monkeypatch):
    post = world.new_post("p1")
    # The planner delivers the remainder (one follower) itself: the app deletes the post right
    # after that BatchWriteItem, before the chunk's settle check.
    calls = inject(monkeypatch, world.stores.table, "put_items", lambda: world.app.delete_post("p1"))

    handed: list[list[str]] = []
    fan_out_post(world.stores, post, hand_out=handed.append)
    assert calls[0] >= 1 and len(handed) == 1
    for chunk in handed:  # the handed-out chunk runs after the delete
        deliver_chunk(world.stores, post, chunk)

    assert_feeds(world, everyone())  # the settle alone took it back out
    world.retract(post)  # the delete's own record
    assert_feeds(world, everyone())


def test_post_deleted_after_settle_check_is_removed_by_its_retraction(world, monkeypatch):
    post = world.new_post("p1")
    # Right after the first chunk's settle check (which reads the post, then the follow edges)
    # the app deletes the post: that chunk's work stands until the retraction runs.
    inject(monkeypatch, world.stores.table, "current_followers", lambda: world.app.delete_post("p1"))

    handed: list[list[str]] = []
    fan_out_post(world.stores, post, hand_out=handed.append)
    delivered_by_planner = set(FOLLOWERS) - {u for c in handed for u in c}
    for chunk in handed:
        deliver_chunk(world.stores, post, chunk)
    for user in delivered_by_planner:  # checked before the delete, so the post is still there
        assert world.durable(user) == ["p1", OLD]

    world.retract(post)
    assert_feeds(world, everyone())


def test_hard_deleted_post_ends_in_no_feed(world, monkeypatch):
    post = world.new_post("p1")
    inject(monkeypatch, world.stores.table, "put_items", lambda: world.app.remove_post("p1"))

    world.publish(post)
    world.retract(post)  # the REMOVE record's task

    assert_feeds(world, everyone())


# -- 2. the retraction runs before the fan-out ----------------------------------------------------


def test_retraction_before_fan_out_ends_in_no_feed(world):
    post = world.new_post("p1")
    world.app.delete_post("p1")

    world.retract(post)
    world.publish(post)  # the INSERT's task, delivered late

    assert_feeds(world, everyone())


def test_handed_out_chunk_running_after_the_retraction_ends_in_no_feed(world):
    post = world.new_post("p1")
    handed: list[list[str]] = []
    fan_out_post(world.stores, post, hand_out=handed.append)  # post live: remainder delivered
    world.app.delete_post("p1")

    world.retract(post)
    for chunk in handed:  # the fan-out's own chunk, queued behind the retraction
        deliver_chunk(world.stores, post, chunk)

    assert_feeds(world, everyone())


# -- 3. deleted, then live again; the stale retraction runs last ----------------------------------


@pytest.mark.parametrize("first_publish_ran", [False, True], ids=["never-delivered", "delivered"])
def test_post_live_again_with_stale_retraction_last_is_in_every_feed_once(world, first_publish_ran):
    post = world.new_post("p1")
    if first_publish_ran:
        world.publish(post)
    world.app.delete_post("p1")
    world.undelete("p1")

    world.publish(post)  # MODIFY deleted -> live
    world.retract(post)  # MODIFY live -> deleted, stale
    if not first_publish_ran:
        world.publish(post)  # the INSERT, last of all

    assert_feeds(world, everyone("p1") | {"erin": [OLD], "frank": [OLD]})


def test_retraction_chunk_handed_out_before_post_came_back_leaves_it_in_every_feed(world):
    post = world.new_post("p1")
    world.publish(post)
    world.app.delete_post("p1")
    handed: list[list[str]] = []
    retract_post(world.stores, post, hand_out=handed.append)  # retracts the remainder
    world.undelete("p1")

    world.publish(post)
    for chunk in handed:  # the stale retraction chunk runs after the post is live again
        retract_chunk(world.stores, post, chunk)

    assert_feeds(world, everyone("p1") | {"erin": [OLD], "frank": [OLD]})


# -- 4. an unfollow while the follow's backfill runs ----------------------------------------------


@pytest.mark.parametrize("user", ["erin", "frank"])
@pytest.mark.parametrize(
    "point",
    [("put_items", 1), ("current_followers", 1)],
    ids=["between-write-and-check", "between-check-and-write"],
)
def test_unfollow_during_follow_backfill_leaves_no_posts_of_the_author(world, monkeypatch, user, point):
    for post_id in ("p1", "p2"):
        world.publish(world.new_post(post_id))
    world.app.follow(user, AUTHOR)
    method, call = point
    calls = inject(monkeypatch, world.stores.table, method, lambda: world.app.unfollow(user, AUTHOR), call)

    world.follow_task(user)
    assert calls[0] >= 1
    assert_feeds(world, {user: [OLD]})  # the backfill's own settle undid it

    world.unfollow_task(user)
    assert_feeds(world, everyone("p2", "p1") | {"erin": [OLD], "frank": [OLD]})


# -- 5. follow and unfollow in quick succession, tasks reversed -----------------------------------


@pytest.mark.parametrize("user", ["erin", "frank"])
def test_follow_then_unfollow_with_tasks_reversed_leaves_no_posts(world, user):
    world.publish(world.new_post("p1"))
    world.app.follow(user, AUTHOR)
    world.app.unfollow(user, AUTHOR)

    world.unfollow_task(user)
    world.follow_task(user)

    assert_feeds(world, {user: [OLD]})


@pytest.mark.parametrize("user", ["bob", "dave"])
def test_unfollow_then_refollow_with_tasks_reversed_keeps_the_posts(world, user):
    for post_id in ("p1", "p2"):
        world.publish(world.new_post(post_id))
    world.app.unfollow(user, AUTHOR)
    world.app.follow(user, AUTHOR)

    world.follow_task(user)
    world.unfollow_task(user)

    assert_feeds(world, {user: ["p2", "p1", OLD]})


@pytest.mark.parametrize("user", ["erin", "frank"])
def test_follow_unfollow_refollow_with_tasks_reversed_has_the_posts(world, user):
    for post_id in ("p1", "p2"):
        world.publish(world.new_post(post_id))
    world.app.follow(user, AUTHOR)
    world.app.unfollow(user, AUTHOR)
    world.app.follow(user, AUTHOR)

    world.follow_task(user)  # the re-follow
    world.unfollow_task(user)
    world.follow_task(user)  # the first follow

    assert_feeds(world, {user: ["p2", "p1", OLD]})


def test_refollow_backfill_during_unfollow_task_keeps_the_posts_cached(world, monkeypatch):
    for post_id in ("p1", "p2"):
        world.publish(world.new_post(post_id))
    world.app.follow("erin", AUTHOR)
    world.app.unfollow("erin", AUTHOR)
    world.follow_task("erin")  # runs after the unfollow: does nothing

    def refollow() -> None:
        world.app.follow("erin", AUTHOR)
        world.follow_task("erin")  # the re-follow's task runs to the end, backfilling p1, p2

    # The unfollow task has looked up erin's (empty) feed items when erin follows again.
    inject(monkeypatch, world.stores.table, "feed_items_by_author", refollow)
    world.unfollow_task("erin")

    assert_feeds(world, {"erin": ["p2", "p1", OLD]})


# -- 6. a chunk whose follower list went stale ----------------------------------------------------


@pytest.mark.parametrize("unfollow_task", ["before-chunk", "after-chunk", "during-chunk"])
def test_chunk_for_a_follower_who_unfollowed_leaves_them_without_the_post(
    world, monkeypatch, unfollow_task
):
    post = world.new_post("p1")
    handed: list[list[str]] = []
    fan_out_post(world.stores, post, hand_out=handed.append)
    (chunk,) = handed
    leaver = chunk[-1]

    def unfollow() -> None:
        world.app.unfollow(leaver, AUTHOR)
        if unfollow_task == "during-chunk":
            world.unfollow_task(leaver)

    if unfollow_task == "during-chunk":  # between the chunk's write and its check
        inject(monkeypatch, world.stores.table, "put_items", unfollow)
    else:
        unfollow()
        if unfollow_task == "before-chunk":
            world.unfollow_task(leaver)
    deliver_chunk(world.stores, post, chunk)  # still lists the leaver
    assert world.durable(leaver) == [OLD]
    if unfollow_task == "after-chunk":
        world.unfollow_task(leaver)

    stayers = [u for u in FOLLOWERS if u != leaver]
    assert_feeds(world, {leaver: [OLD]} | {u: ["p1", OLD] for u in stayers})


# -- 7. redelivery -----------------------------------------------------------------------------


def test_every_task_and_chunk_twice_gives_the_same_final_state(world):
    posts: dict[str, Post] = {}

    def publish(post_id: str) -> None:
        posts[post_id] = post = world.new_post(post_id)
        handed: list[list[str]] = []
        for _ in range(2):
            fan_out_post(world.stores, post, hand_out=handed.append)
        assert len(handed) == 2 and handed[0] == handed[1]
        for chunk in handed:  # each handed-out chunk twice over
            deliver_chunk(world.stores, post, chunk)

    def twice(task: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            task()
            first = world.snapshot()
            task()
            assert world.snapshot() == first
        return run

    with_p = {"bob": ["p2", "p1", OLD], "carol": ["p2", "p1", OLD], "dave": ["p2", "p1", OLD]}
    publish("p1")
    publish("p2")
    assert_feeds(world, with_p | {"erin": [OLD], "frank": [OLD]})

    world.app.follow("erin", AUTHOR)
    world.app.follow("frank", AUTHOR)
    steps: list[tuple[Callable[[], None], dict[str, list[str]]]] = [
        (twice(lambda: world.follow_task("erin")), {"erin": ["p2", "p1", OLD]}),
        (twice(lambda: world.follow_task("frank")), {"frank": ["p2", "p1", OLD]}),
        (lambda: world.app.delete_post("p1"), {}),
        (twice(lambda: world.retract(posts["p1"])), everyone("p2")),
        (lambda: world.app.unfollow("erin", AUTHOR), {}),
        (twice(lambda: world.unfollow_task("erin")), everyone("p2") | {"erin": [OLD]}),
    ]
    for step, expected in steps:
        step()
        assert_feeds(world, expected)

    for user in WARM:  # no duplicate members, whatever their bytes
        assert len(world.redis.zset(f"feed:{user}")) == len(world.cached(user) or [])


def test_chunk_run_twice_after_post_deleted_stays_out(world):
    post = world.new_post("p1")
    handed: list[list[str]] = []
    fan_out_post(world.stores, post, hand_out=handed.append)
    world.app.delete_post("p1")
    world.retract(post)

    for _ in range(2):
        deliver_chunk(world.stores, post, handed[0])
        retract_chunk(world.stores, post, handed[0])
        deliver_chunk(world.stores, post, handed[0])

    assert_feeds(world, everyone())


# -- 8. chunking covers the audience exactly once ------------------------------------------------


@pytest.mark.parametrize("extra", [0, 1, 4], ids=["3-followers", "4-followers", "7-followers"])
def test_fan_out_hands_out_full_chunks_and_delivers_the_rest_itself(world, extra):
    more = [f"fan{i}" for i in range(extra)]
    for user in more:
        world.app.follow(user, AUTHOR)
    audience = FOLLOWERS + more
    post = world.new_post("p1")

    handed: list[list[str]] = []
    total = fan_out_post(world.stores, post, hand_out=handed.append)

    assert total == len(audience)
    assert all(len(chunk) == CHUNK_SIZE for chunk in handed)
    handed_users = [u for chunk in handed for u in chunk]
    assert len(handed_users) == len(set(handed_users))
    remainder = [u for u in audience if u not in handed_users]
    assert 1 <= len(remainder) <= CHUNK_SIZE  # the planner's own share, never empty
    for user in audience:  # only the planner's share is delivered so far
        assert ("p1" in world.durable(user)) == (user in remainder), user

    for chunk in handed:
        deliver_chunk(world.stores, post, chunk)

    assert_feeds(world, {u: ["p1", OLD] for u in FOLLOWERS} | {u: ["p1"] for u in more})
    assert_feeds(world, {"erin": [OLD], "frank": [OLD]})


def test_retraction_covers_the_audience_exactly_once(world):
    more = [f"fan{i}" for i in range(4)]
    for user in more:
        world.app.follow(user, AUTHOR)
    post = world.new_post("p1")
    world.publish(post)
    world.app.delete_post("p1")

    handed: list[list[str]] = []
    total = retract_post(world.stores, post, hand_out=handed.append)
    handed_users = [u for chunk in handed for u in chunk]

    assert total == 7 and len(handed) == 3 and len(set(handed_users)) == 6
    for chunk in handed:
        retract_chunk(world.stores, post, chunk)
    assert_feeds(world, everyone() | {u: [] for u in more})
