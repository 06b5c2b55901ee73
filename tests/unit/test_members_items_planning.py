"""Feed members, durable feed items and BatchWriteItem planning: the pure fan-out core."""

from __future__ import annotations

import json
import random

import pytest

from feedpipe.core.items import WRITE_BATCH_LIMIT, feed_item_key, feed_item_template, feed_items
from feedpipe.core.members import MemberFormat, encode_member, member_score
from feedpipe.core.planning import chunked, split_audience, unique, write_groups

FEED_ITEM_ATTRIBUTES = {
    "PK", "SK", "GSI1PK", "GSI1SK",
    "user_id", "post_id", "author_id", "author_username", "content_preview", "content_type",
    "created_at", "inserted_at", "engagement_score", "is_promoted", "feed_rank",
}  # fmt: skip
INSERTED_AT = "2024-01-15T10:30:01.042Z"


# -- members -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(MemberFormat))
def test_member_is_byte_identical_for_the_same_post(post_factory, fmt):
    first = encode_member(post_factory(content_preview="Café opening, all welcome"), fmt)
    again = encode_member(post_factory(content_preview="Café opening, all welcome"), fmt)

    assert first.encode() == again.encode()


@pytest.mark.parametrize("fmt", list(MemberFormat))
def test_member_ignores_mutable_fields_so_a_redelivery_cannot_duplicate(post_factory, fmt):
    before = encode_member(post_factory(engagement_score=0, is_promoted=False), fmt)
    after = encode_member(post_factory(engagement_score=57.5, is_promoted=True), fmt)

    assert before == after


@pytest.mark.parametrize("fmt", list(MemberFormat))
def test_member_is_canonical_json_with_post_id(post_factory, fmt):
    member = encode_member(post_factory(post_id="p#1", content_preview='say "hi", then: {go}'), fmt)

    parsed = json.loads(member)
    assert parsed["postId"] == "p#1"
    assert list(parsed) == sorted(parsed)
    assert member == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert '", "' not in member and '": ' not in member


def test_full_member_holds_what_the_app_renders(post_factory):
    post = post_factory(content_preview="Café opening")

    assert json.loads(encode_member(post)) == {
        "postId": "p1",
        "authorId": "u_alice",
        "authorUsername": "alice",
        "contentPreview": "Café opening",
        "contentType": "text",
        "createdAt": "2024-01-15T10:30:00.123Z",
    }
    assert "Café" in encode_member(post)  # kept as UTF-8, not \u-escaped


def test_compact_member_holds_ids_only(post_factory):
    member = encode_member(post_factory(), MemberFormat.COMPACT)

    assert member == '{"authorId":"u_alice","postId":"p1"}'


def test_member_score_is_created_at_in_epoch_ms(post_factory):
    assert member_score(post_factory()) == 1705314600123


# -- durable feed items --------------------------------------------------------------------------


def test_feed_items_carry_exactly_the_contract_attributes(post_factory):
    post = post_factory(engagement_score=3, is_promoted=True)

    items = list(feed_items(["u_bob", "u_carol"], post, feed_item_template(post, INSERTED_AT)))

    assert len(items) == 2
    for item in items:
        assert set(item) == FEED_ITEM_ATTRIBUTES
    assert items[0] == {
        "PK": {"S": "FEED#u_bob"},
        "SK": {"S": "2024-01-15T10:30:00.123Z#p1"},
        "GSI1PK": {"S": "FEED_MANAGEMENT#u_bob"},
        "GSI1SK": {"S": "2024-01-15T10:30:00.123Z"},
        "user_id": {"S": "u_bob"},
        "post_id": {"S": "p1"},
        "author_id": {"S": "u_alice"},
        "author_username": {"S": "alice"},
        "content_preview": {"S": "hello"},
        "content_type": {"S": "text"},
        "created_at": {"S": "2024-01-15T10:30:00.123Z"},
        "inserted_at": {"S": INSERTED_AT},
        "engagement_score": {"N": "3"},
        "is_promoted": {"BOOL": True},
        "feed_rank": {"N": "1"},
    }
    assert items[1]["PK"] == {"S": "FEED#u_carol"}
    assert items[1]["user_id"] == {"S": "u_carol"}


def test_feed_items_have_a_numeric_ttl_only_when_given(post_factory):
    post = post_factory()

    with_ttl = next(feed_items(["u_bob"], post, feed_item_template(post, INSERTED_AT, ttl=1707906600)))

    assert set(with_ttl) == FEED_ITEM_ATTRIBUTES | {"ttl"}
    assert with_ttl["ttl"] == {"N": "1707906600"}


def test_feed_item_key_is_the_key_of_the_feed_item(post_factory):
    post = post_factory(post_id="p#1")
    item = next(feed_items(["u_bob"], post, feed_item_template(post, INSERTED_AT)))

    assert feed_item_key("u_bob", post) == {"PK": item["PK"], "SK": item["SK"]}


# -- planning --------------------------------------------------------------------------------------


def _put(pk: str, sk: str, version: int = 0) -> tuple[dict, dict]:
    key = {"PK": {"S": pk}, "SK": {"S": sk}}
    return key, {"PutRequest": {"Item": {**key, "v": {"N": str(version)}}}}


def _ident(request: dict) -> tuple[str, str]:
    item = request["PutRequest"]["Item"]
    return item["PK"]["S"], item["SK"]["S"]


def test_write_groups_split_at_25():
    groups = list(write_groups(_put(f"FEED#u{i}", "t#p1") for i in range(60)))

    assert WRITE_BATCH_LIMIT == 25
    assert [len(g) for g in groups] == [25, 25, 10]


def test_write_groups_never_repeat_a_key_in_a_group_and_keep_the_last_request():
    rng = random.Random(7)
    requests = [_put(f"FEED#u{rng.randrange(40)}", f"t#p{rng.randrange(3)}", v) for v in range(500)]
    last = {}
    for key, request in requests:
        last[(key["PK"]["S"], key["SK"]["S"])] = request

    groups = list(write_groups(requests))

    for group in groups:
        assert len(group) <= 25
        assert len({_ident(r) for r in group}) == len(group)
    written = [r for g in groups for r in g]
    assert len(written) == len(last)  # every distinct key once overall
    assert {_ident(r): r for r in written} == last


def test_write_groups_with_a_smaller_limit():
    groups = list(write_groups((_put("FEED#u1", f"t#p{i}") for i in range(7)), limit=3))

    assert [len(g) for g in groups] == [3, 3, 1]


def test_write_groups_of_nothing_is_nothing():
    assert list(write_groups([])) == []


def test_chunked():
    assert list(chunked(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked(iter("ab"), 5)) == [["a", "b"]]
    assert list(chunked([], 3)) == []


def test_chunked_refuses_a_size_below_one():
    with pytest.raises(ValueError):
        list(chunked([1, 2], 0))


def test_unique_keeps_first_seen_order():
    assert unique(["c", "a", "c", "b", "a"]) == ["c", "a", "b"]
    assert unique([]) == []


def test_split_audience_dedups_then_chunks():
    assert split_audience(["u1", "u2", "u1", "u3", "u2", "u4"], 3) == [["u1", "u2", "u3"], ["u4"]]
