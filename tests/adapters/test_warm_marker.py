"""Warm users with empty feeds (contract section 3): a regenerated feed keeps its user warm
until its TTL even with nothing in it, through a marker in ``feed:{user}``'s slot that the app's
``getFeed`` (ZREVRANGE, then JSON.parse of each member) never sees. The cache's own behaviour on
fakeredis; the feed rules on the in-memory stores (held to fakeredis and moto by
``test_store_contract``), with the regen queue on fakeredis."""

from __future__ import annotations

import json
from collections.abc import Iterator

import fakeredis
import pytest

from feedpipe.adapters.redis_feeds import FeedCache
from feedpipe.adapters.regen_queue import RegenQueue
from feedpipe.config import load_settings
from feedpipe.core.entries import CacheEntry
from feedpipe.core.events import Post
from feedpipe.core.keys import REGEN_QUEUE, OwnKeys
from feedpipe.core.members import encode_member
from feedpipe.core.records import post_from_image
from feedpipe.dev.appsim import AppWriter
from feedpipe.feeds.delivery import remove_post
from feedpipe.feeds.memory import memory_stores
from feedpipe.feeds.memory_cache import MemoryCache
from feedpipe.feeds.regen import drain
from feedpipe.feeds.stores import Stores
from feedpipe.ops import active_users
from tests.adapters.conftest import APP_TABLE, FEED_TTL_SECONDS, publish
from tests.fakes import FakeDeadLetters
from tests.memory_app import MemoryDynamo, MemoryFeedsRedis

OWN = OwnKeys()


def member(post_id: str, author: str = "alice") -> str:
    return json.dumps({"postId": post_id, "authorId": author})


def get_feed(redis: fakeredis.FakeRedis | MemoryFeedsRedis, user: str) -> list[str]:
    """The seed's getFeed: every member must parse, and each is a post."""
    return [json.loads(m)["postId"] for m in redis.zrevrange(f"feed:{user}", 0, -1)]


# -- the cache alone ---------------------------------------------------------------------------


def test_an_empty_rebuild_leaves_the_user_warm_and_the_next_post_is_cached(cache: FeedCache, redis_client) -> None:
    assert cache.replace_feed("u1", []) == 0
    assert not redis_client.exists("feed:u1")  # Redis keeps no empty sorted set
    assert 0 < redis_client.ttl(OWN.warm_marker("u1")) <= FEED_TTL_SECONDS
    assert cache.is_warm("u1") and not cache.is_warm("u2")

    assert cache.add_to_warm_feeds(["u1", "u2"], CacheEntry(1000, member("p1"))) == 1
    assert get_feed(redis_client, "u1") == ["p1"]
    assert not redis_client.exists("feed:u2"), "fan-out created a cold user's feed"
    assert redis_client.keys("*u2*") == []


def test_a_write_refreshes_both_ttls(cache: FeedCache, redis_client) -> None:
    cache.replace_feed("u1", [])
    redis_client.expire(OWN.warm_marker("u1"), 5)
    assert cache.add_many_if_warm("u1", [CacheEntry(1000, member("p1")), CacheEntry(2000, member("p2"))])
    assert redis_client.ttl("feed:u1") == redis_client.ttl(OWN.warm_marker("u1")) == FEED_TTL_SECONDS


@pytest.mark.parametrize("how", ["post", "author"])
def test_removals_that_empty_a_warm_feed_leave_the_user_warm_for_the_rest_of_its_ttl(
    cache: FeedCache, redis_client, how: str
) -> None:
    redis_client.zadd("feed:u1", {member("p1"): 1000})  # a feed from before markers: no marker
    redis_client.expire("feed:u1", 100)
    if how == "post":
        assert cache.remove_post(["u1"], 1000, "p1") == 1
    else:
        assert cache.remove_author("u1", "alice") == 1
    assert not redis_client.exists("feed:u1")
    assert 0 < redis_client.ttl(OWN.warm_marker("u1")) <= 100

    assert cache.add_to_warm_feeds(["u1"], CacheEntry(2000, member("p2"))) == 1
    assert get_feed(redis_client, "u1") == ["p2"]


def test_a_scheduled_rebuild_keeps_an_empty_feeds_remaining_ttl(cache: FeedCache, redis_client) -> None:
    cache.replace_feed("u1", [])
    redis_client.expire(OWN.warm_marker("u1"), 50)
    cache.replace_feed("u1", [], keep_ttl=True)
    assert 0 < redis_client.ttl(OWN.warm_marker("u1")) <= 50
    cache.replace_feed("u1", [CacheEntry(1000, member("p1"))], keep_ttl=True)
    assert 0 < redis_client.ttl("feed:u1") <= 50 and 0 < redis_client.ttl(OWN.warm_marker("u1")) <= 50


def test_a_user_whose_id_no_marker_can_share_a_slot_with_is_warm_only_by_the_feed(cache, redis_client) -> None:
    assert OWN.warm_marker("a}b") is None
    cache.replace_feed("a}b", [])
    assert not cache.is_warm("a}b") and redis_client.keys("*") == []
    cache.replace_feed("a}b", [CacheEntry(1000, member("p1"))])
    assert cache.add_to_warm_feeds(["a}b"], CacheEntry(2000, member("p2"))) == 1


def test_the_warm_user_walk_finds_marked_empty_feeds_and_unmarked_ones_once(cache: FeedCache, redis_client) -> None:
    marked = [f"m{i}" for i in range(30)]
    for user in marked:
        cache.replace_feed(user, [CacheEntry(1000, member("p1"))] if user < "m2" else [])
    redis_client.zadd("feed:legacy", {member("p1"): 1000})
    redis_client.set("feedpipe:warm:not-a-marker", 1)
    found: list[str] = []
    cursor = "0"
    while True:
        cursor, page = cache.warm_users_page(cursor, 7)
        found.extend(page)
        if cursor == "0":
            break
    assert sorted(found) == sorted([*marked, "legacy"])


# -- the feed rules: a new user's feed, regenerated before anyone they follow has posted -------


@pytest.fixture
def world() -> Iterator[tuple[Stores, MemoryFeedsRedis]]:
    fake = fakeredis.FakeRedis()
    settings = load_settings({"FEEDPIPE_TABLE_NAME": APP_TABLE})
    queue = RegenQueue(fake, OwnKeys(settings.key_prefix), settings.regen_lease_seconds)
    built = memory_stores(settings, dead_letters=FakeDeadLetters(), regen_queue=queue)
    assert isinstance(built.cache, MemoryCache)
    yield built, MemoryFeedsRedis(built.cache, fake)
    fake.close()


def test_users_who_follow_before_anyone_posts_get_their_feeds_cached(world: tuple[Stores, MemoryFeedsRedis]) -> None:
    stores, redis = world
    app = AppWriter(MemoryDynamo(stores.table), redis, APP_TABLE, transactional=False)
    for user in ("alice", "newbie", "lurker"):
        app.create_user(user)
    app.follow("newbie", "alice")  # the app pushes a regen job on every follow
    app.follow("lurker", "alice")
    redis.rpush(REGEN_QUEUE, "not json")  # a bad job alongside changes nothing here
    drain(stores, stores.regen_queue, budget_seconds=30)
    assert redis.llen(REGEN_QUEUE) == 0
    assert active_users(stores) == ["lurker", "newbie"]

    app.create_post("alice", "user_alice", "hello", post_id="p1", created_at="2024-03-01T10:00:00.000Z")
    post = _post(stores, "p1")
    publish(stores, post)
    assert get_feed(redis, "newbie") == get_feed(redis, "lurker") == ["p1"]
    assert redis.zscore("feed:newbie", encode_member(post)) == post.created_at_ms

    remove_post(stores, post, ["newbie"])  # emptied again: still warm
    app.create_post("alice", "user_alice", "again", post_id="p2", created_at="2024-03-01T10:01:00.000Z")
    publish(stores, _post(stores, "p2"))
    assert get_feed(redis, "newbie") == ["p2"]
    assert get_feed(redis, "lurker") == ["p2", "p1"]
    assert active_users(stores) == ["lurker", "newbie"]


def _post(stores: Stores, post_id: str) -> Post:
    image = stores.table.post_image(post_id)
    assert image is not None
    return post_from_image(image)
