"""One contract for the feed rules' storage, run against every implementation (Stream-Framework's
pattern): the in-memory stores (``feeds.memory``) and the real adapters on moto and fakeredis.
A behaviour the rules rely on is asserted here once, so the in-memory stores the race tests run
on cannot drift from what DynamoDB and the Lua scripts do.

The real adapters run twice: on fakeredis, and on a real Redis (the tests' own ``real_redis``),
whose Lua is the one production runs. The app's writes go through ``AppWriter`` in every world
(on the memory side through ``tests.memory_app``), so the items are the app's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
import redis

import feedpipe.services
from feedpipe.config import load_settings
from feedpipe.core import keys
from feedpipe.core.entries import CacheEntry
from feedpipe.core.events import Post
from feedpipe.core.follower_segments import Segment
from feedpipe.core.items import feed_item_key
from feedpipe.core.keys import WALK_START, OwnKeys
from feedpipe.core.records import post_from_image
from feedpipe.core.segments import SegmentProgress
from feedpipe.dev.appsim import AppWriter
from feedpipe.feeds.memory import memory_stores
from feedpipe.feeds.stores import Stores
from feedpipe.services import build_stores
from tests.adapters.conftest import APP_TABLE
from tests.memory_app import memory_app

MAX_LENGTH = 4
TTL = 3600
ENV = {"FEEDPIPE_TABLE_NAME": APP_TABLE, "FEEDPIPE_FEED_MAX_LENGTH": str(MAX_LENGTH),
       "FEEDPIPE_FEED_TTL_SECONDS": str(TTL), "FEEDPIPE_WRITE_CONCURRENCY": "1"}


@dataclass
class Backend:
    stores: Stores
    app: AppWriter
    stamp: int = 0

    def post(self, post_id: str, author: str = "alice", **kwargs: Any) -> Post:
        self.stamp += 1
        self.app.create_post(author, f"user_{author}", f"text of {post_id}", post_id=post_id,
                             created_at=f"2024-03-01T10:00:{self.stamp:02d}.000Z", **kwargs)
        image = self.stores.table.post_image(post_id)
        assert image is not None
        return post_from_image(image)

    def deliver(self, user: str, *posts: Post) -> None:
        s = self.stores
        s.table.put_items(i for p in posts for i in s.format.items([user], p))

    def entry(self, post: Post) -> CacheEntry:
        return self.stores.format.entry(post)

    def set_app_key(self, name: str) -> None:
        """A key the app owns (its follow caches), set as the app sets it."""
        redis = self.app.redis
        if hasattr(redis, "set"):
            redis.set(name, "[]")
        else:
            redis.cache.space.set(name, "[]")

    def has_key(self, name: str) -> bool:
        redis = self.app.redis
        return bool(redis.exists(name)) if hasattr(redis, "exists") else redis.cache.space.exists(name)


def ids(entries: list[CacheEntry]) -> list[str]:
    return [json.loads(e.member)["postId"] for e in entries]


class StoreContract:
    """Every implementation must pass these; subclasses provide the ``backend`` fixture."""

    # -- posts and follows ---------------------------------------------------------------------

    def test_followers_come_a_page_at_a_time_and_resume_from_a_page_key(self, backend: Backend) -> None:
        fans = [f"fan{i}" for i in range(5)]
        for fan in fans:
            backend.app.follow(fan, "alice")
        backend.app.follow("fan0", "bob")

        pages = list(backend.stores.table.follower_pages_from("alice", 2))

        assert [p for p, _ in pages] == [fans[0:2], fans[2:4], fans[4:]]
        assert all(last is not None for _, last in pages[:-1]) and pages[-1][1] is None
        rest = list(backend.stores.table.follower_pages_from("alice", 2, pages[0][1]))
        assert [f for p, _ in rest for f in p] == fans[2:]
        assert [f for p, _ in backend.stores.table.follower_pages_from("alice") for f in p] == fans

    def test_a_segment_of_followers_is_read_from_its_lower_bound_up_to_but_not_its_upper(
        self, backend: Backend
    ) -> None:
        fans = ["f1", "f2", "f3", "f4", "f5"]
        for fan in fans:
            backend.app.follow(fan, "alice")
        backend.post("p0")  # GSI1SK POST#...: never a follower
        table = backend.stores.table

        def walk(segment: Segment, page: int | None = None) -> list[str]:
            return [f for p, _ in table.follower_pages_from("alice", page, segment=segment) for f in p]

        assert walk(Segment("f2", "f4")) == ["f2", "f3"]
        assert walk(Segment("f3", None)) == ["f3", "f4", "f5"] == walk(Segment("f3", None), 1)
        assert walk(Segment("", "f2")) == ["f1"] and walk(Segment("", None)) == fans
        first, last = next(table.follower_pages_from("alice", 2, segment=Segment("f2", None)))
        assert first == ["f2", "f3"] and last is not None
        rest = table.follower_pages_from("alice", 2, last, Segment("f2", "f5"))  # a page key, a narrower segment
        assert [f for p, _ in rest for f in p] == ["f4"]
        assert table.last_follower("alice") == "f5" and table.last_follower("alice", Segment("f1", "f4")) == "f3"
        assert table.last_follower("alice", Segment("f6", None)) is None and table.last_follower("bob") is None

    def test_follow_edges_are_read_strongly(self, backend: Backend) -> None:
        backend.app.follow("bob", "alice")
        backend.app.follow("bob", "zoe")
        backend.app.follow("carol", "alice")
        table = backend.stores.table
        assert table.followees("bob") == ["alice", "zoe"]
        assert table.current_followers(["bob", "carol", "dave"], "alice") == {"bob", "carol"}
        backend.app.unfollow("bob", "alice")
        assert table.current_followers(["bob", "carol"], "alice") == {"carol"}
        assert table.followees("bob") == ["zoe"]

    def test_recent_posts_are_the_newest_live_ones_newest_first(self, backend: Backend) -> None:
        p1, p2, p3, p4 = (backend.post(f"p{i}") for i in range(1, 5))
        backend.post("hidden", visibility="private")
        backend.post("other", author="zoe")
        backend.app.delete_post("p3")
        table, excluded = backend.stores.table, backend.stores.excluded

        assert [p.post_id for p in table.recent_posts("alice", 2, excluded)] == ["p4", "p2"]
        assert [p.post_id for p in table.recent_posts("alice", 10, excluded)] == ["p4", "p2", "p1"]
        assert table.recent_posts("alice", 0, excluded) == []
        newest = table.newest_post_images("alice", 3)
        assert [i["post_id"] for i in newest] == ["hidden", "p4", "p3"]
        assert newest[2]["is_deleted"] is True
        assert table.live_post_ids(["p1", "p3", "hidden", "gone"], excluded) == {"p1"}
        assert set(table.post_images(["p1", "p3", "gone"])) == {"p1", "p3"}
        backend.app.remove_post("p2")
        assert table.post_image("p2") is None and table.post_image("p1") is not None
        assert p2 not in table.recent_posts("alice", 10, excluded) and p4.post_id == "p4"

    def test_users_are_found_by_a_scan_a_page_at_a_time(self, backend: Backend) -> None:
        users = [f"u{i}" for i in range(5)]
        for user in users:
            backend.app.create_user(user)
        backend.app.follow("u0", "u1")
        found, start = [], None
        while True:
            page, start = backend.stores.table.user_page(0, 1, start, 2)
            found += page
            if start is None:
                break
        assert sorted(found) == users

    def test_huge_authors_are_counted_registered_and_listed(self, backend: Backend) -> None:
        huge = backend.stores.huge_authors
        backend.app.create_user("alice")
        for fan in ("bob", "carol"):
            backend.app.follow(fan, "alice")
        assert huge.followers_count("alice") == 2
        assert huge.followers_count("nobody") == 0
        assert huge.registered() == []
        huge.register("alice", 2)
        huge.register("alice", 3)
        huge.register("zed", 9)
        assert huge.registered() == ["alice", "zed"]

    # -- durable feeds -------------------------------------------------------------------------

    def test_feed_items_are_keyed_by_user_and_sk_newest_first(self, backend: Backend) -> None:
        p1, p2, z = backend.post("p1"), backend.post("p2"), backend.post("z1", author="zoe")
        table = backend.stores.table
        item = next(backend.stores.format.items(["bob"], p1))
        assert table.put_items([item, item]) == 1  # the same key once
        backend.deliver("bob", p2, z)
        backend.deliver("carol", p1)

        assert [i["post_id"] for i in table.feed_items("bob")] == ["z1", "p2", "p1"]
        assert [i["post_id"] for i in table.feed_items("bob", limit=2)] == ["z1", "p2"]
        assert table.feed_items("bob")[0]["SK"] == keys.feed_sk(z.created_at, "z1")
        assert sorted(i["post_id"] for i in table.feed_items_by_author("bob", "alice")) == ["p1", "p2"]
        assert [k for page in table.feed_key_pages("bob") for k in page] == [
            feed_item_key("bob", p) for p in (z, p2, p1)]

        assert table.delete_keys([feed_item_key("bob", p2), feed_item_key("bob", p2)]) == 1
        assert [i["post_id"] for i in table.feed_items("bob")] == ["z1", "p1"]
        table.delete_keys([feed_item_key("bob", p2)])  # gone already: no error
        assert [i["post_id"] for i in table.feed_items("carol")] == ["p1"]

    def test_feed_owners_are_found_a_bounded_scan_at_a_time(self, backend: Backend) -> None:
        post = backend.post("p1")
        users = [f"u{i}" for i in range(6)]
        for user in users:
            backend.deliver(user, post)
        owners, cursor, calls = set(), None, 0
        while True:
            found, cursor = backend.stores.table.feed_owners_page(cursor, 1, 3)
            owners |= set(found)
            calls += 1
            if cursor is None:
                break
        assert owners == set(users) and calls > 1

    # -- cached feeds --------------------------------------------------------------------------

    def test_only_warm_feeds_are_written_trimmed_and_given_the_ttl(self, backend: Backend) -> None:
        cache = backend.stores.cache
        posts = [backend.post(f"p{i}") for i in range(6)]

        assert cache.add_to_warm_feeds(["bob", "cold"], backend.entry(posts[0])) == 0
        assert not cache.is_warm("bob") and cache.members("bob") == []
        assert cache.replace_feed("bob", []) == 0  # a rebuild of an empty feed: warm all the same
        assert cache.is_warm("bob") and not cache.is_warm("cold")
        assert cache.add_to_warm_feeds(["bob", "cold"], backend.entry(posts[0])) == 1
        assert cache.add_many_if_warm("bob", [backend.entry(p) for p in posts[1:]])
        assert not cache.add_many_if_warm("cold", [backend.entry(posts[0])])
        assert not cache.add_many_if_warm("bob", [])

        members, ttl, marker_ttl = cache.members_with_ttl("bob")
        assert ids(members) == ["p5", "p4", "p3", "p2"]  # trimmed to the newest MAX_LENGTH
        assert members[0] == CacheEntry(posts[5].created_at_ms, backend.stores.format.member(posts[5]))
        assert TTL - 5 <= ttl <= TTL and TTL - 5 <= marker_ttl <= TTL
        assert ids(cache.members("bob", 2)) == ["p5", "p4"]
        assert cache.members_with_ttl("cold") == ([], -2, -2)

    def test_removal_matches_the_post_id_and_an_emptied_feed_stays_warm(self, backend: Backend) -> None:
        cache = backend.stores.cache
        p1, p2 = backend.post("p1"), backend.post("p2", author="zoe")
        other_bytes = json.dumps({"postId": "p1", "x": 1})
        cache.replace_feed("bob", [backend.entry(p2), backend.entry(p1), CacheEntry(p1.created_at_ms, other_bytes)])

        assert cache.remove_post(["bob", "cold"], p1.created_at_ms, "p1") == 2
        assert cache.remove_post(["bob"], p2.created_at_ms + 1, "p2") == 0  # another score
        assert ids(cache.members("bob")) == ["p2"]
        assert cache.remove_entries([("bob", p2.created_at_ms, "p2")]) == 1
        assert cache.members("bob") == [] and cache.is_warm("bob")
        assert cache.add_to_warm_feeds(["bob"], backend.entry(p1)) == 1

    def test_an_authors_posts_leave_together(self, backend: Backend) -> None:
        cache = backend.stores.cache
        a1, a2, z = backend.post("a1"), backend.post("a2"), backend.post("z1", author="zoe")
        cache.replace_feed("bob", [backend.entry(p) for p in (z, a2, a1)])
        assert cache.remove_author("bob", "alice") == 2
        assert ids(cache.members("bob")) == ["z1"]
        assert cache.remove_author("bob", "zoe") == 1 and cache.is_warm("bob")
        assert cache.remove_author("cold", "zoe") == 0 and not cache.is_warm("cold")

    def test_replace_swaps_the_feed_and_a_kept_ttl_never_warms_a_cold_user(self, backend: Backend) -> None:
        cache = backend.stores.cache
        posts = [backend.post(f"p{i}") for i in range(6)]
        assert cache.replace_feed("cold", [backend.entry(posts[0])], keep_ttl=True) == 0
        assert not cache.is_warm("cold")

        assert cache.replace_feed("bob", [backend.entry(p) for p in reversed(posts)]) == MAX_LENGTH
        assert ids(cache.members("bob")) == ["p5", "p4", "p3", "p2"]
        assert cache.replace_feed("bob", [backend.entry(posts[0])], keep_ttl=True) == 1
        members, ttl, _ = cache.members_with_ttl("bob")
        assert ids(members) == ["p0"] and 0 < ttl <= TTL

    def test_warm_users_are_walked_and_follow_caches_dropped(self, backend: Backend) -> None:
        cache = backend.stores.cache
        post = backend.post("p1")
        cache.replace_feed("bob", [backend.entry(post)])
        cache.replace_feed("carol", [])
        found, cursor = set(), "0"
        while True:
            cursor, users = cache.warm_users_page(cursor, 10)
            found |= set(users)
            if cursor == "0":
                break
        assert found == {"bob", "carol"}

        for name in (keys.followers_cache("alice"), keys.following_cache("bob"), keys.following_cache("x")):
            backend.set_app_key(name)
        cache.drop_follow_caches("bob", "alice")
        assert not backend.has_key(keys.followers_cache("alice"))
        assert not backend.has_key(keys.following_cache("bob"))
        assert backend.has_key(keys.following_cache("x"))

    # -- author lists and cursors -------------------------------------------------------------

    def test_author_lists_are_added_to_only_once_rebuilt(self, backend: Backend) -> None:
        lists = backend.stores.author_posts
        posts = [backend.post(f"p{i}") for i in range(6)]
        assert not lists.add_if_present("alice", [backend.entry(posts[0])])
        assert lists.add_if_present("alice", [])
        assert lists.newest(["alice"], 10) == {"alice": []}
        lists.add_many("alice", [backend.entry(p) for p in posts[:5]])
        assert lists.add_if_present("alice", [backend.entry(posts[5])])
        assert ids(lists.newest(["alice"], 10)["alice"]) == ["p5", "p4", "p3", "p2"]
        assert ids(lists.newest(["alice", "zoe"], 2)["alice"]) == ["p5", "p4"]
        assert lists.remove_posts("alice", [(posts[5].created_at_ms, "p5"), (posts[0].created_at_ms, "p0")]) == 1
        assert ids(lists.newest(["alice"], 10)["alice"]) == ["p4", "p3", "p2"]

    def test_the_huge_author_set_is_a_cache_loaded_whole(self, backend: Backend) -> None:
        lists = backend.stores.author_posts
        assert lists.huge_among(["alice"]) is None
        assert not lists.add_huge_if_loaded("alice")
        assert lists.huge_among(["alice"]) is None
        lists.load_huge([])
        assert lists.huge_among(["alice"]) == [] and lists.huge_among([]) == []
        assert lists.add_huge_if_loaded("alice")
        lists.load_huge(["zed"])
        assert lists.huge_among(["bob", "zed", "alice"]) == ["zed", "alice"]

    def test_cached_feeds_are_walked_and_capped_page_by_page(self, backend: Backend) -> None:
        cache = backend.stores.cache
        posts = [backend.post(f"p{i}") for i in range(4)]
        users = [f"u{i}" for i in range(7)]
        for n, user in enumerate(users):
            cache.replace_feed(user, [backend.entry(p) for p in reversed(posts[: 1 + n % 4])])
        cache.replace_feed("empty", [])  # warm, with no feed key
        backend.set_app_key(keys.feed_cache("str"))  # the app's own, not a sorted set
        found, cursor = [], WALK_START
        while True:
            cursor, page = cache.feed_keys_page(cursor, 3)
            found += page
            if cursor == WALK_START:
                break
        assert sorted(set(found)) == [keys.feed_cache(u) for u in users]

        removed = cache.trim_feeds([keys.feed_cache(u) for u in users], 2)
        assert removed == [max(1 + n % 4 - 2, 0) for n in range(len(users))]
        assert ids(cache.members("u3")) == ["p3", "p2"]
        assert cache.members_with_ttl("u3")[1] > 0, "a trim keeps the feed's TTL"
        assert cache.trim_feeds([keys.feed_cache("str"), keys.feed_cache("nobody")], 2) == [0, 0]
        assert backend.has_key(keys.feed_cache("str"))

    def test_backfill_segments_move_only_from_the_version_read(self, backend: Backend) -> None:
        progress = backend.stores.backfill_progress
        resume = {"PK": {"S": "USER#u1"}, "SK": {"S": keys.PROFILE_SK}}
        assert progress.start(2) == [SegmentProgress(2, 0), SegmentProgress(2, 1)]
        seen = progress.get(2, 0)
        moved = progress.advance(seen, resume, 3)
        assert moved == SegmentProgress(2, 0, resume, 3, False, 1) == progress.get(2, 0)
        assert progress.advance(seen, None, 1) is None, "a stale task moves nothing"
        assert moved is not None
        assert progress.advance(moved, None, 2) == SegmentProgress(2, 0, None, 5, True, 2)
        assert progress.start(2)[0].done, "a rerun keeps where each segment got to"
        assert [s.done for s in progress.all(2)] == [True, False]
        progress.clear(2)
        assert progress.get(2, 0) == SegmentProgress(2, 0)
        assert progress.advance(SegmentProgress(2, 0), None, 1) is None, "never started"

    def test_cursors_are_kept_until_cleared(self, backend: Backend) -> None:
        cursors, name = backend.stores.cursors, OwnKeys().durable_trim_cursor
        assert cursors.load(name) is None
        cursors.save(name, '{"PK": {"S": "FEED#u1"}}')
        assert cursors.load(name) == '{"PK": {"S": "FEED#u1"}}'
        cursors.clear(name)
        assert cursors.load(name) is None


class TestMemoryStores(StoreContract):
    @pytest.fixture
    def backend(self) -> Backend:
        stores = memory_stores(load_settings(ENV))
        return Backend(stores, memory_app(stores, APP_TABLE))


class TestRealStores(StoreContract):
    @pytest.fixture
    def backend(self, monkeypatch: pytest.MonkeyPatch, dynamodb: Any, tables: dict[str, str]) -> Iterator[Backend]:
        redis = fakeredis.FakeRedis()
        monkeypatch.setattr(feedpipe.services, "connect_redis", lambda url: redis)
        stores = build_stores(load_settings(ENV), dynamodb, redis=redis)
        yield Backend(stores, AppWriter(dynamodb, redis, APP_TABLE, transactional=False))
        redis.close()


class TestRealRedisStores(StoreContract):
    """The Lua scripts on a real Redis (fakeredis emulates them), DynamoDB on moto."""

    @pytest.fixture
    def backend(self, monkeypatch: pytest.MonkeyPatch, dynamodb: Any, tables: dict[str, str],
                real_redis: redis.Redis) -> Backend:
        monkeypatch.setattr(feedpipe.services, "connect_redis", lambda url: real_redis)
        stores = build_stores(load_settings(ENV), dynamodb, redis=real_redis)
        return Backend(stores, AppWriter(dynamodb, real_redis, APP_TABLE, transactional=False))
