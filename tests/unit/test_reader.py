"""Fan-out-on-read's pure parts: merging a reader's sources, and the keys it uses (golden strings)."""

from __future__ import annotations

import json

from feedpipe.core import keys
from feedpipe.core.entries import CacheEntry
from feedpipe.core.keys import OwnKeys
from feedpipe.core.merging import merge_feeds


def member(post_id: str, author: str = "a", **extra: str) -> str:
    return json.dumps({"authorId": author, "postId": post_id, **extra}, sort_keys=True, separators=(",", ":"))


def ids(merged: list[dict]) -> list[str]:
    return [m["postId"] for m in merged]


def test_sources_merge_newest_first_up_to_the_limit():
    own = [CacheEntry(5000, member("p5")), CacheEntry(2000, member("p2"))]
    star = [CacheEntry(4000, member("s4", "star")), CacheEntry(1000, member("s1", "star"))]
    news = [CacheEntry(3000, member("n3", "news"))]

    assert ids(merge_feeds([own, star, news], limit=20)) == ["p5", "s4", "n3", "p2", "s1"]
    assert ids(merge_feeds([own, star, news], limit=3)) == ["p5", "s4", "n3"]
    assert merge_feeds([own, star], limit=0) == []


def test_a_post_in_the_feed_and_in_its_authors_list_is_served_once():
    # Pushed before its author became huge, then found again when the list was rebuilt; the
    # member format may even differ (compact in one place, full in the other).
    own = [CacheEntry(1000, member("s1", "star", contentPreview="hi"))]
    star = [CacheEntry(2000, member("s2", "star")), CacheEntry(1000, member("s1", "star"))]

    merged = merge_feeds([own, star], limit=20)

    assert ids(merged) == ["s2", "s1"]


def test_members_that_are_not_posts_are_skipped():
    junk = [CacheEntry(9000, "not json"), CacheEntry(8000, "[1, 2]"), CacheEntry(7000, json.dumps({"postId": 7})),
            CacheEntry(1000, member("p1"))]

    assert ids(merge_feeds([junk], limit=20)) == ["p1"]


def test_ties_on_the_score_order_as_zrevrange_does():
    same = [CacheEntry(1000, member("a")), CacheEntry(1000, member("b"))]

    assert ids(merge_feeds([same], limit=20)) == ["b", "a"]


def test_fanout_on_read_keys_are_golden():
    assert OwnKeys().huge_authors == "feedpipe:huge_authors"
    assert OwnKeys().author_posts("u1") == "feedpipe:author_posts:u1"
    assert OwnKeys("staging:fp:").author_posts("u1") == "staging:fp:author_posts:u1"
    assert keys.FANOUT_ON_READ_PK == "FANOUT_ON_READ"
    assert keys.huge_author_sk("u1") == "AUTHOR#u1"
