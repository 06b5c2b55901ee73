"""Fan-out-on-read's pure parts: merging a reader's sources, and the keys it uses (golden strings)."""

from __future__ import annotations

import json

from feedpipe.core import keys
from feedpipe.core.keys import OwnKeys
from feedpipe.core.merging import merge_feeds


def member(post_id: str, author: str = "a", **extra: str) -> str:
    return json.dumps({"authorId": author, "postId": post_id, **extra}, sort_keys=True, separators=(",", ":"))


def ids(merged: list[dict]) -> list[str]:
    return [m["postId"] for m in merged]


def test_sources_merge_newest_first_up_to_the_limit():
    own = [(member("p5"), 5000), (member("p2"), 2000)]
    star = [(member("s4", "star"), 4000), (member("s1", "star"), 1000)]
    news = [(member("n3", "news"), 3000)]

    assert ids(merge_feeds([own, star, news], limit=20)) == ["p5", "s4", "n3", "p2", "s1"]
    assert ids(merge_feeds([own, star, news], limit=3)) == ["p5", "s4", "n3"]
    assert merge_feeds([own, star], limit=0) == []


def test_a_post_in_the_feed_and_in_its_authors_list_is_served_once():
    # Pushed before its author became huge, then found again when the list was rebuilt; the
    # member format may even differ (compact in one place, full in the other).
    own = [(member("s1", "star", contentPreview="hi"), 1000)]
    star = [(member("s2", "star"), 2000), (member("s1", "star"), 1000)]

    merged = merge_feeds([own, star], limit=20)

    assert ids(merged) == ["s2", "s1"]


def test_members_that_are_not_posts_are_skipped():
    junk = [("not json", 9000), ("[1, 2]", 8000), (json.dumps({"postId": 7}), 7000), (member("p1"), 1000)]

    assert ids(merge_feeds([junk], limit=20)) == ["p1"]


def test_ties_on_the_score_order_as_zrevrange_does():
    same = [(member("a"), 1000), (member("b"), 1000)]

    assert ids(merge_feeds([same], limit=20)) == ["b", "a"]


def test_fanout_on_read_keys_are_golden():
    assert OwnKeys().huge_authors == "feedpipe:huge_authors"
    assert OwnKeys().author_posts("u1") == "feedpipe:author_posts:u1"
    assert OwnKeys("staging:fp:").author_posts("u1") == "staging:fp:author_posts:u1"
    assert keys.FANOUT_ON_READ_PK == "FANOUT_ON_READ"
    assert keys.huge_author_sk("u1") == "AUTHOR#u1"
