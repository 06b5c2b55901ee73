"""Splitting a walk of followers: split points lie strictly between their bounds, the two
halves cover the rest exactly, shares never grow, and segments round-trip through messages."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feedpipe.core.events import PayloadError, Post, PostPublished, PostRetracted, event_from_payload
from feedpipe.core.follower_segments import Segment, split_point
from feedpipe.core.messages import Resume, resume_of, resume_payload, segment_of, segment_payload

ids = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20)


@given(ids, ids)
def test_a_split_point_lies_strictly_between_its_bounds_and_is_a_valid_string(a, b):
    low, high = sorted((a, b))
    point = split_point(low, high)
    if point is not None:
        assert low < point < high
        point.encode("utf-8")  # no lone surrogate: DynamoDB takes it
    else:
        assert low == high or high == low + "\0" * (len(high) - len(low)) or _adjacent(low, high)


def _adjacent(low: str, high: str) -> bool:
    """No string of a few more characters fits between: high is low's successor at some depth."""
    return all(not (low < low + c < high) for c in ("\0", "\U0010ffff")) and not (low < high[:-1] < high)


def test_split_points_are_short_and_halve_evenly_spread_ids():
    assert split_point("u0000999", "u0999999\0") == "u04"
    assert split_point("a", "c") == "b"
    assert split_point("same", "same\0") is None and split_point("b", "a") is None
    ids_ = [f"u{i:07d}" for i in range(0, 1_000_000, 7)]
    point = split_point(ids_[100], ids_[-1] + "\0")
    assert point is not None
    upper = sum(i >= point for i in ids_)
    assert 0.35 < upper / (len(ids_) - 101) < 0.65


@given(st.lists(ids, min_size=3, max_size=40, unique=True), st.integers(1, 64))
def test_a_split_covers_the_rest_of_the_segment_exactly_and_shares_the_walkers(followers, share):
    followers.sort()
    segment = Segment(followers[0], None, share)
    after, top = followers[0], followers[-1]
    halves = segment.split(after, top)
    if halves is None:
        return
    lower, upper = halves
    assert lower.lo == segment.lo and lower.hi == upper.lo and upper.hi == segment.hi
    assert after < upper.lo <= top  # the upper part holds the top follower, the lower part what was walked
    assert lower.share + upper.share == share and min(lower.share, upper.share) >= 1
    rest = [f for f in followers if f > after]
    below = [f for f in rest if f < upper.lo]
    above = [f for f in rest if f >= upper.lo]
    assert sorted(below + above) == rest


def test_a_segment_with_no_walkers_to_give_does_not_split():
    assert Segment("", None, 1).split("a", "z") is None
    assert Segment("", None, 2).split("a", "a") is None  # nothing above what was walked


def test_segment_and_resume_messages_round_trip_through_their_payloads():
    post = Post("p1", "a", "ann", "hi", "text", "2024-01-15T10:30:00.123Z", 1705314600123)
    segment = Segment("u04", None, 8)
    key = {"GSI1PK": {"S": "USER#a"}, "GSI1SK": {"S": "FOLLOWER#u05"}}
    for event in (PostPublished(post), PostRetracted(post)):
        split = json.loads(json.dumps(segment_payload(event, segment)))  # as the broker carries it
        assert event_from_payload(split) == event and segment_of(split) == segment and resume_of(split) is None
        resume = Resume(key, 12, Segment("u04", "u07", 2))
        handed_on = json.loads(json.dumps(resume_payload(event, resume)))
        assert resume_of(handed_on) == resume and segment_of(handed_on) == resume.segment
    for bad in ({"lo": 1, "hi": None, "share": 1}, {"lo": "", "hi": 3, "share": 1}, {"lo": "", "share": 0}, "x"):
        with pytest.raises(PayloadError, match="segment"):
            segment_of({"segment": bad})
