"""Golden strings for every key feedpipe builds: a typo here is a silent data bug elsewhere."""

from __future__ import annotations

import pytest

from feedpipe.core import keys
from feedpipe.core.keys import OwnKeys


@pytest.mark.parametrize(
    ("built", "golden"),
    [
        # DynamoDB, as the app writes it.
        (keys.user_pk("u1"), "USER#u1"),
        (keys.post_pk("p1"), "POST#p1"),
        (keys.following_sk("u2"), "FOLLOWING#u2"),
        (keys.follower_gsi1sk("u1"), "FOLLOWER#u1"),
        (keys.follower_range_gsi1sk("u1"), "FOLLOWER#u1"),
        (keys.follower_range_gsi1sk(None), "FOLLOWER$"),
        (keys.post_gsi1sk("2024-01-15T10:30:00.123Z", "p1"), "POST#2024-01-15T10:30:00.123Z#p1"),
        (keys.timeline_gsi2pk("2024-01-15"), "TIMELINE#2024-01-15"),
        (keys.username_gsi1pk("alice"), "USERNAME#alice"),
        # DynamoDB feed items, feedpipe's.
        (keys.feed_pk("u1"), "FEED#u1"),
        (keys.feed_sk("2024-01-15T10:30:00.123Z", "p1"), "2024-01-15T10:30:00.123Z#p1"),
        (keys.feed_gsi1pk("u1"), "FEED_MANAGEMENT#u1"),
        # Lease table.
        (keys.backfill_key(16, 3), "backfill|16|3"),
        (keys.lease_key("arn:aws:dynamodb:us-east-1:1:table/T/stream/X", "shardId-1"),
         "arn:aws:dynamodb:us-east-1:1:table/T/stream/X|shardId-1"),
        # Dead-letter table: the store's partition, its letters in time order, the counter.
        (OwnKeys().dead_letters, "feedpipe:dlq"),
        (OwnKeys("staging:fp:").dead_letters, "staging:fp:dlq"),
        (keys.letter_sk("2026-11-29T14:00:00.000Z", "ab12"), "LETTER#2026-11-29T14:00:00.000Z#ab12"),
        (keys.letters_until("2026-11-29T14:00:00.000Z"), "LETTER#2026-11-29T14:00:00.000Z#~"),
        (keys.LETTER_COUNT_SK, "COUNT"),
        # Redis, as the app reads it.
        (keys.feed_cache("u1"), "feed:u1"),
        (keys.followers_cache("u1"), "followers:u1"),
        (keys.following_cache("u1"), "following:u1"),
        # Redis, feedpipe's own.
        (OwnKeys().write_budget, "feedpipe:write_budget"),  # limits adds ":" and its own keys
        (OwnKeys().follower_reads, "feedpipe:follower_reads"),  # the same
        (OwnKeys().warm_marker("u1"), "feedpipe:warm:{feed:u1}"),
        (OwnKeys("staging:fp:").warm_marker("u1"), "staging:fp:warm:{feed:u1}"),
        (OwnKeys().warm_marker("a{b}"), "feedpipe:warm:{b}feed:a{b}"),
    ],
)
def test_key_builders(built, golden):
    assert built == golden


@pytest.mark.parametrize(
    ("constant", "golden"),
    [
        (keys.USER_PREFIX, "USER#"),
        (keys.POST_PREFIX, "POST#"),
        (keys.FEED_PREFIX, "FEED#"),
        (keys.FOLLOWING_PREFIX, "FOLLOWING#"),
        (keys.FOLLOWER_PREFIX, "FOLLOWER#"),
        (keys.USERNAME_PREFIX, "USERNAME#"),
        (keys.FEED_MANAGEMENT_PREFIX, "FEED_MANAGEMENT#"),
        (keys.TIMELINE_PREFIX, "TIMELINE#"),
        (keys.PROFILE_SK, "PROFILE"),
        (keys.POST_SK, "METADATA"),
        (keys.GSI1, "GSI1"),
        (keys.GSI2, "GSI2"),
        (keys.GSI3, "GSI3"),
        (keys.FEED_CACHE_PREFIX, "feed:"),
        (keys.REGEN_QUEUE, "feed_regen_queue"),
        (keys.FOLLOWERS_CACHE_PREFIX, "followers:"),
        (keys.FOLLOWING_CACHE_PREFIX, "following:"),
        (keys.DEFAULT_PREFIX, "feedpipe:"),
    ],
)
def test_key_constants(constant, golden):
    assert constant == golden


def test_ids_are_embedded_verbatim():
    odd = "a#b:c*{d}"

    assert keys.feed_pk(odd) == "FEED#a#b:c*{d}"
    assert keys.feed_cache(odd) == "feed:a#b:c*{d}"
    assert keys.strip_prefix(keys.user_pk(odd), keys.USER_PREFIX) == odd


@pytest.mark.parametrize(
    ("value", "prefix", "expected"),
    [
        ("USER#u1", "USER#", "u1"),
        ("USER#a#b", "USER#", "a#b"),
        ("USER#", "USER#", None),  # an empty id is no id
        ("POST#p1", "USER#", None),
        ("user#u1", "USER#", None),
    ],
)
def test_strip_prefix(value, prefix, expected):
    assert keys.strip_prefix(value, prefix) == expected


@pytest.mark.parametrize(
    ("key", "hashed"),
    [("feed:u1", "feed:u1"), ("feed:a{b}c", "b"), ("feed:a{b", "feed:a{b"), ("feed:a{}b{c}", "feed:a{}b{c}"),
     ("feedpipe:warm:{feed:u1}", "feed:u1")],
)
def test_hashed_part_follows_redis_cluster_hash_tags(key, hashed):
    assert keys.hashed_part(key) == hashed


@pytest.mark.parametrize("user_id", ["u1", "a{b}", "a{b", "x:y", "{u}"])
def test_a_warm_marker_hashes_as_its_feed_and_names_its_user(user_id):
    own = OwnKeys("app1:fp:")
    marker = own.warm_marker(user_id)
    assert marker is not None and marker.startswith("app1:fp:warm:")
    assert keys.hashed_part(marker) == keys.hashed_part(keys.feed_cache(user_id))
    assert own.user_of_warm_marker(marker) == user_id


@pytest.mark.parametrize("name", ["app1:fp:warm:", "app1:fp:warm:{x}", "app1:fp:warm:{feed:u1", "app1:fp:dlq",
                                  "feedpipe:warm:{feed:u1}"])
def test_keys_that_are_not_warm_markers_name_no_user(name):
    assert OwnKeys("app1:fp:").user_of_warm_marker(name) is None


@pytest.mark.parametrize("user_id", ["a}b", "a{}b{c}"])
def test_an_id_no_marker_can_share_a_slot_with_has_none(user_id):
    assert OwnKeys().warm_marker(user_id) is None
