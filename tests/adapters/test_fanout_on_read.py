"""Fan-out-on-read for huge authors, in-process on moto and fakeredis (README "Huge accounts").

The cast: ``star`` is followed by ``bob`` and ``carol`` (warm feeds) and ``dave`` (cold), which
at a threshold of 3 makes ``star`` huge; ``small`` is followed by ``bob`` only; ``erin`` (warm)
follows neither. Every feed already holds ``OLD``, a post by ``zoe`` whom everyone follows;
warm feeds hold it in Redis too. Each test checks what a user would see: the feed a reader
returns, and the durable and cached feeds the pipeline wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

import feedpipe.services
from feedpipe.config import load_settings
from feedpipe.core import keys
from feedpipe.core.events import Post
from feedpipe.core.records import post_from_image
from feedpipe.dev.appsim import AppWriter
from feedpipe.feeds.follows import apply_follow, apply_unfollow
from feedpipe.feeds.stores import Stores
from feedpipe.reader import read_feed
from feedpipe.services import build_stores
from tests.adapters.conftest import inject, publish, retract

from .conftest import APP_TABLE

THRESHOLD = 3
STAR_FANS = ["bob", "carol", "dave"]
WARM = {"bob", "carol", "erin"}
USERS = ["bob", "carol", "dave", "erin"]
OLD = "z_old"


class World:
    def __init__(self, stores: Stores, app: AppWriter, redis: fakeredis.FakeRedis) -> None:
        self.stores = stores
        self.app = app
        self.redis = redis
        self._stamp = 0

    def new_post(self, post_id: str, author: str = "star") -> Post:
        self._stamp += 1
        self.app.create_post(author, f"user_{author}", f"text of {post_id}", post_id=post_id,
                             created_at=f"2024-03-01T10:00:{self._stamp:02d}.000Z")
        image = self.stores.table.post_image(post_id)
        assert image is not None
        return post_from_image(image)

    def publish(self, post: Post) -> None:
        publish(self.stores, post)

    def retract(self, post: Post) -> None:
        retract(self.stores, post)

    def read(self, user: str) -> list[str]:
        return [m["postId"] for m in read_feed(self.stores, user)]

    def durable(self, user: str) -> list[str]:
        return [item["post_id"] for item in self.stores.table.feed_items(user)]

    def cached(self, user: str) -> list[str] | None:
        key = keys.feed_cache(user)
        if not self.redis.exists(key):
            return None
        return [json.loads(m)["postId"] for m in self.redis.zrevrange(key, 0, -1)]

    def author_list(self, author: str = "star") -> list[str]:
        key = self.stores.author_posts.own.author_posts(author)
        return [json.loads(m)["postId"] for m in self.redis.zrevrange(key, 0, -1)]

    def undelete(self, post_id: str) -> None:
        self.app.dynamodb.update_item(
            TableName=APP_TABLE, Key={"PK": {"S": f"POST#{post_id}"}, "SK": {"S": "METADATA"}},
            UpdateExpression="SET is_deleted = :f", ExpressionAttributeValues={":f": {"BOOL": False}},
        )


def make_world(dynamodb: Any, monkeypatch: pytest.MonkeyPatch, threshold: int) -> World:
    redis = fakeredis.FakeRedis()
    monkeypatch.setattr(feedpipe.services, "connect_redis", lambda url: redis)
    settings = load_settings({
        "FEEDPIPE_TABLE_NAME": APP_TABLE,
        "FEEDPIPE_FANOUT_CHUNK_SIZE": "2",
        "FEEDPIPE_WRITE_CONCURRENCY": "1",
        "FEEDPIPE_FANOUT_ON_READ_FOLLOWERS": str(threshold),
    })
    w = World(build_stores(settings, dynamodb), AppWriter(dynamodb, redis, APP_TABLE, transactional=False), redis)
    for user in ["star", "small", "zoe", *USERS]:
        w.app.create_user(user)
    for user in STAR_FANS:
        w.app.follow(user, "star")  # the app keeps star's followers_count: 3
    w.app.follow("bob", "small")
    old = w.new_post(OLD, author="zoe")
    for user in USERS:
        w.app.follow(user, "zoe")
        w.stores.table.put_items(w.stores.format.items([user], old))
        if user in WARM:
            w.stores.cache.replace_feed(user, [w.stores.format.entry(old)])
    return w


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, dynamodb: Any, tables: dict[str, str]) -> Iterator[World]:
    w = make_world(dynamodb, monkeypatch, THRESHOLD)
    yield w
    w.stores.table.close()
    w.redis.close()


@pytest.fixture
def world_off(monkeypatch: pytest.MonkeyPatch, dynamodb: Any, tables: dict[str, str]) -> Iterator[World]:
    w = make_world(dynamodb, monkeypatch, 0)
    yield w
    w.stores.table.close()
    w.redis.close()


def test_off_by_default_a_big_author_is_pushed_to_every_follower(world_off):
    world_off.publish(world_off.new_post("p1"))

    # Fan-out wrote no key of fan-out-on-read (warm markers are the feeds', the read pace the walk's).
    others = (b"feedpipe:warm:", b"feedpipe:follower_reads:")
    assert [k for k in world_off.redis.keys("feedpipe:*") if not k.startswith(others)] == []
    for user in STAR_FANS:
        assert world_off.durable(user) == ["p1", OLD]
        assert world_off.read(user) == ["p1", OLD]
    assert world_off.cached("bob") == ["p1", OLD]
    assert world_off.cached("dave") is None


def test_a_huge_authors_post_is_read_by_followers_only_and_written_to_no_feed(world):
    world.publish(world.new_post("p1"))

    for user in STAR_FANS:
        assert world.durable(user) == [OLD], f"a feed item was written for {user}"
        assert world.read(user) == ["p1", OLD], user
    assert world.cached("bob") == [OLD] and world.cached("dave") is None  # dave stays cold
    assert world.read("erin") == [OLD]  # not a follower
    assert world.author_list() == ["p1"]
    assert world.stores.metrics.fanout_on_read_posts._value.get() >= 1


def test_an_author_below_the_threshold_still_fans_out(world):
    world.publish(world.new_post("s1", author="small"))

    assert world.durable("bob") == ["s1", OLD] and world.cached("bob") == ["s1", OLD]
    assert world.read("bob") == ["s1", OLD]
    assert world.author_list("small") == []


def test_redelivered_publish_and_retraction_change_nothing_more(world):
    post = world.new_post("p1")
    world.publish(post)
    world.publish(post)
    assert world.author_list() == ["p1"] and world.read("bob") == ["p1", OLD]

    world.app.delete_post("p1")
    world.retract(post)
    world.retract(post)
    assert world.author_list() == [] and world.read("bob") == [OLD]


@pytest.mark.parametrize("how", ["soft", "hard"])
def test_a_deleted_post_leaves_every_reader(world, how):
    keep, gone = world.new_post("p1"), world.new_post("p2")
    world.publish(keep)
    world.publish(gone)
    (world.app.delete_post if how == "soft" else world.app.remove_post)("p2")
    world.retract(gone)

    for user in STAR_FANS:
        assert world.read(user) == ["p1", OLD]
    world.redis.flushall()  # and a rebuild from the table does not bring it back
    for user in STAR_FANS:
        assert world.read(user) == ["p1", OLD]


def test_the_author_list_and_the_huge_set_survive_a_flush(world):
    world.publish(world.new_post("p1"))
    world.app.unfollow("dave", "star")  # star falls below the threshold: promotion is sticky
    world.redis.flushall()

    assert world.read("bob") == ["p1", OLD]  # bob's cached feed is gone too: read from durable
    assert world.read("dave") == [OLD]
    assert world.author_list() == ["p1"]
    world.publish(world.new_post("p2"))
    assert world.read("carol") == ["p2", "p1", OLD] and world.durable("carol") == [OLD]
    assert world.stores.metrics.author_posts_rebuilds._value.get() >= 1


def test_crossing_the_threshold_between_two_posts_serves_both_once(world):
    world.app.unfollow("dave", "star")  # 2 followers: not huge yet
    world.publish(world.new_post("p1"))
    assert world.durable("bob") == ["p1", OLD]

    world.app.follow("dave", "star")
    apply_follow(world.stores, "dave", "star")  # backfill: p1 pushed into dave's feed
    world.publish(world.new_post("p2"))  # huge now: pulled

    for user in STAR_FANS:
        assert world.read(user) == ["p2", "p1", OLD], user
        assert world.durable(user) == ["p1", OLD]
    world.redis.delete(world.stores.author_posts.own.author_posts("star"))
    for user in STAR_FANS:  # rebuilt from the table, the list holds p1 too: still once
        assert world.read(user) == ["p2", "p1", OLD], user


def test_a_follow_and_an_unfollow_of_a_huge_author(world):
    world.publish(world.new_post("p1"))
    world.app.follow("erin", "star")
    apply_follow(world.stores, "erin", "star")
    assert world.read("erin") == ["p1", OLD]

    world.app.unfollow("erin", "star")
    apply_unfollow(world.stores, "erin", "star")
    assert world.read("erin") == [OLD] and world.durable("erin") == [OLD]


def test_the_reader_takes_the_followees_the_app_already_has(world):
    world.publish(world.new_post("p1"))
    posts = read_feed(world.stores, "erin", following=["star", "zoe"])
    assert [m["postId"] for m in posts] == ["p1", OLD]
    assert posts[0]["authorId"] == "star" and posts[0]["contentPreview"] == "text of p1"


def test_a_post_deleted_while_it_is_published_ends_in_no_list(world, monkeypatch):
    post = world.new_post("p1")

    def delete_and_retract() -> None:
        world.app.delete_post("p1")
        world.retract(post)  # the whole retraction runs before the publish's write lands

    inject(monkeypatch, world.stores.huge_authors, "followers_count", delete_and_retract)
    world.publish(post)

    assert world.author_list() == [] and world.read("bob") == [OLD]


def test_a_post_revived_during_its_retraction_stays(world, monkeypatch):
    post = world.new_post("p1")
    world.publish(post)
    world.app.delete_post("p1")
    inject(monkeypatch, world.stores.author_posts, "remove_posts", lambda: world.undelete("p1"))

    world.retract(post)

    assert world.author_list() == ["p1"] and world.read("carol") == ["p1", OLD]


def test_a_rebuild_from_a_stale_index_keeps_no_dead_post(world, monkeypatch):
    world.publish(world.new_post("p1"))
    dead = world.new_post("p2")
    world.app.delete_post("p2")
    real = world.stores.table.recent_posts
    # GSI1 is eventually consistent: it may still show p2 as live.
    monkeypatch.setattr(world.stores.table, "recent_posts", lambda *a: [dead, *real(*a)])
    world.redis.delete(world.stores.author_posts.own.author_posts("star"))

    assert world.read("bob") == ["p1", OLD]
    assert world.author_list() == ["p1"]


def test_a_promotion_survives_a_concurrent_load_of_the_set_from_a_stale_read(world, monkeypatch):
    author_posts = world.stores.author_posts
    huge_set = author_posts.own.huge_authors
    # The set is evicted right after star's promotion is written durably; another worker, which
    # read the registry before that write, reloads the set just after this one found it missing.
    inject(monkeypatch, world.stores.huge_authors, "register", lambda: world.redis.delete(huge_set))
    inject(monkeypatch, author_posts, "add_huge_if_loaded", lambda: author_posts.load_huge([]))

    world.publish(world.new_post("p1"))

    assert author_posts.huge_among(["star", "small"]) == ["star"]
    assert world.read("bob") == ["p1", OLD]
