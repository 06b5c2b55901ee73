"""FeedCache against fakeredis (with Lua), read back the way the app reads them."""

from __future__ import annotations

import json

from feedpipe.core.entries import CacheEntry
from feedpipe.core.events import Post
from feedpipe.core.members import MemberFormat, encode_member

MAX_LENGTH = 5  # what conftest.py gives the cache
TTL = 3600


def _post(post_id: str, author_id: str = "u_alice", ms: int = 1705314600123) -> Post:
    return Post(
        post_id=post_id,
        author_id=author_id,
        author_username=author_id.removeprefix("u_"),
        content_preview=f"post {post_id}",
        content_type="text",
        created_at="2024-01-15T10:30:00.123Z",
        created_at_ms=ms,
    )


def _warm(redis_client, user_id: str, entries: dict[str, int] | None = None, ttl: int = 30) -> None:
    """A feed the app has loaded recently: the key exists."""
    redis_client.zadd(f"feed:{user_id}", entries or {encode_member(_post("seed", "u_seed", 1)): 1})
    redis_client.expire(f"feed:{user_id}", ttl)


def _feed(redis_client, user_id: str) -> list[tuple[str, int]]:
    """The app's getFeed: ZREVRANGE, then JSON.parse each member."""
    return [
        (json.loads(m)["postId"], int(s))
        for m, s in redis_client.zrevrange(f"feed:{user_id}", 0, -1, withscores=True)
    ]


# -- fan-out into warm feeds ------------------------------------------------------------------------


def test_add_writes_only_warm_feeds(cache, redis_client):
    _warm(redis_client, "u_bob")
    _warm(redis_client, "u_carol")
    post = _post("p1")

    warm = cache.add_to_warm_feeds(["u_bob", "u_carol", "u_dave"], CacheEntry(post.created_at_ms, encode_member(post)))

    assert warm == 2
    assert _feed(redis_client, "u_bob")[0] == ("p1", 1705314600123)
    assert _feed(redis_client, "u_carol")[0] == ("p1", 1705314600123)
    assert not redis_client.exists("feed:u_dave")  # a cold feed is not recreated


def test_add_trims_to_max_length_keeping_the_newest(cache, redis_client):
    _warm(redis_client, "u_bob", {encode_member(_post(f"old{n}", ms=n)): n for n in range(1, 6)})

    newer, older = _post("new", ms=100), _post("ancient", ms=0)
    cache.add_to_warm_feeds(["u_bob"], CacheEntry(newer.created_at_ms, encode_member(newer)))
    cache.add_to_warm_feeds(["u_bob"], CacheEntry(older.created_at_ms, encode_member(older)))

    assert [post_id for post_id, _ in _feed(redis_client, "u_bob")] == ["new", "old5", "old4", "old3", "old2"]


def test_add_refreshes_the_ttl(cache, redis_client):
    _warm(redis_client, "u_bob", ttl=5)
    post = _post("p1")

    cache.add_to_warm_feeds(["u_bob"], CacheEntry(post.created_at_ms, encode_member(post)))

    assert TTL - 5 <= redis_client.ttl("feed:u_bob") <= TTL


def test_a_redelivered_add_does_not_duplicate(cache, redis_client):
    _warm(redis_client, "u_bob")

    for _ in range(3):  # the same record delivered three times, member rebuilt each time
        post = _post("p1")
        cache.add_to_warm_feeds(["u_bob"], CacheEntry(post.created_at_ms, encode_member(post)))

    assert [post_id for post_id, _ in _feed(redis_client, "u_bob")].count("p1") == 1


def test_add_many_if_warm(cache, redis_client):
    _warm(redis_client, "u_bob")
    posts = [_post(f"p{n}", ms=1000 + n) for n in range(7)]
    entries = [CacheEntry(p.created_at_ms, encode_member(p)) for p in posts]

    assert cache.add_many_if_warm("u_bob", entries) is True
    assert cache.add_many_if_warm("u_cold", entries) is False
    assert cache.add_many_if_warm("u_bob", []) is False

    assert [post_id for post_id, _ in _feed(redis_client, "u_bob")] == ["p6", "p5", "p4", "p3", "p2"]
    assert not redis_client.exists("feed:u_cold")


# -- removal ---------------------------------------------------------------------------------------------


def test_remove_post_matches_the_post_id_not_the_member_bytes(cache, redis_client):
    post, neighbour = _post("p1"), _post("p2")  # same score, different post
    _warm(
        redis_client,
        "u_bob",
        {
            encode_member(post, MemberFormat.COMPACT): post.created_at_ms,
            encode_member(neighbour): neighbour.created_at_ms,
        },
    )
    _warm(redis_client, "u_carol", {encode_member(post, MemberFormat.FULL): post.created_at_ms})

    removed = cache.remove_post(["u_bob", "u_carol", "u_cold"], post.created_at_ms, post.post_id)

    assert removed == 2
    assert _feed(redis_client, "u_bob") == [("p2", 1705314600123)]
    assert _feed(redis_client, "u_carol") == []
    assert not redis_client.exists("feed:u_cold")


def test_remove_author_takes_every_post_of_that_author(cache, redis_client):
    _warm(
        redis_client,
        "u_bob",
        {
            encode_member(_post("a1", "u_alice", 1)): 1,
            encode_member(_post("a2", "u_alice", 2), MemberFormat.COMPACT): 2,
            encode_member(_post("z1", "u_zed", 3)): 3,
            "not json at all": 4,
        },
    )

    assert cache.remove_author("u_bob", "u_alice") == 2

    remaining = redis_client.zrange("feed:u_bob", 0, -1)
    assert b"not json at all" in remaining
    assert [json.loads(m)["postId"] for m in remaining if m.startswith(b"{")] == ["z1"]


# -- rebuild ------------------------------------------------------------------------------------------------


def test_replace_feed_swaps_contents_caps_and_sets_ttl(cache, redis_client):
    _warm(redis_client, "u_bob", {encode_member(_post("stale", ms=1)): 1}, ttl=5)
    newest_first = [_post(f"p{n}", ms=1000 - n) for n in range(8)]

    count = cache.replace_feed("u_bob", [CacheEntry(p.created_at_ms, encode_member(p)) for p in newest_first])

    assert count == MAX_LENGTH
    assert [post_id for post_id, _ in _feed(redis_client, "u_bob")] == ["p0", "p1", "p2", "p3", "p4"]
    assert TTL - 5 <= redis_client.ttl("feed:u_bob") <= TTL


def test_replace_feed_creates_a_cold_feed(cache, redis_client):
    post = _post("p1")

    assert cache.replace_feed("u_new", [CacheEntry(post.created_at_ms, encode_member(post))]) == 1

    assert _feed(redis_client, "u_new") == [("p1", 1705314600123)]


def test_members_are_newest_first(cache, redis_client):
    a, b = _post("a", ms=1), _post("b", ms=2)
    _warm(redis_client, "u_bob", {encode_member(a): 1, encode_member(b): 2})

    assert cache.members("u_bob") == [CacheEntry(2, encode_member(b)), CacheEntry(1, encode_member(a))]


# -- follow caches -----------------------------------------------------------------------------------------


def test_drop_follow_caches_deletes_only_the_two_affected(cache, redis_client):
    # u_bob follows u_alice: u_alice's followers and u_bob's followings changed.
    for key in ("followers:u_alice", "following:u_bob", "followers:u_bob", "following:u_alice"):
        redis_client.sadd(key, "x")
    _warm(redis_client, "u_bob")

    cache.drop_follow_caches(follower_id="u_bob", followed_id="u_alice")

    assert not redis_client.exists("followers:u_alice")
    assert not redis_client.exists("following:u_bob")
    assert redis_client.exists("followers:u_bob", "following:u_alice", "feed:u_bob") == 3
