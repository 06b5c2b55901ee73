"""``RecordPipeline``: one batch in, events dispatched, bad records dead-lettered, rest counted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.core.events import Event, FollowEnded, FollowStarted, PostPublished, PostRetracted

SOURCE = "dynamodb-streams:shardId-00000001"


class FakeDispatcher:
    """Takes events the way the broker would: one message per ``per_message`` events."""

    def __init__(self, per_message: int = 2, fail: bool = False) -> None:
        self.per_message = per_message
        self.fail = fail
        self.events: list[Event] = []

    def dispatch(self, events: Sequence[Event]) -> int:
        if self.fail:
            raise ConnectionError("broker down")
        self.events.extend(events)
        return -(-len(events) // self.per_message)


class FakeDeadLetters:
    def __init__(self) -> None:
        self.letters: list[tuple[str, str, Any]] = []

    def add_many(self, letters: Sequence[tuple[str, str, Any]]) -> None:
        self.letters.extend(letters)


@pytest.fixture
def dispatcher() -> FakeDispatcher:
    return FakeDispatcher()


@pytest.fixture
def dead_letters() -> FakeDeadLetters:
    return FakeDeadLetters()


@pytest.fixture
def pipeline(dispatcher, dead_letters) -> RecordPipeline:
    return RecordPipeline(dispatcher, dead_letters, excluded_visibilities=frozenset({"private"}))


def test_good_records_are_dispatched_as_events_in_order(pipeline, dispatcher, dead_letters, load_event):
    names = ["post_insert", "follow_insert", "post_modify_deleted", "follow_remove", "post_remove"]

    outcome = pipeline.handle([load_event(n) for n in names], SOURCE)

    assert [type(e) for e in dispatcher.events] == [
        PostPublished, FollowStarted, PostRetracted, FollowEnded, PostRetracted
    ]  # fmt: skip
    assert (outcome.records, outcome.dispatched, outcome.dead_lettered) == (5, 5, 0)
    assert outcome.messages == 3  # what the dispatcher reported
    assert dead_letters.letters == []
    assert not outcome.ignored


def test_bad_records_are_dead_lettered_with_reason_and_raw_record(
    pipeline, dispatcher, dead_letters, load_event
):
    bad = [load_event("bad_post_missing_author"), load_event("bad_unknown_type_tag")]

    outcome = pipeline.handle(bad, SOURCE)

    assert outcome.dead_lettered == 2
    assert outcome.dispatched == 0
    assert dispatcher.events == []
    assert [(source, record) for source, _, record in dead_letters.letters] == [
        (SOURCE, bad[0]),
        (SOURCE, bad[1]),
    ]
    reasons = [reason for _, reason, _ in dead_letters.letters]
    assert "author_id" in reasons[0]
    assert "STRING" in reasons[1]


def test_ignored_records_are_counted_by_entity(pipeline, dispatcher, dead_letters, load_event):
    names = ["user_profile_insert", "feed_item_insert", "feed_item_insert", "follow_modify",
             "post_modify_likes"]  # fmt: skip

    outcome = pipeline.handle([load_event(n) for n in names], SOURCE)

    assert outcome.ignored == {"user": 1, "feed": 2, "follow": 1, "post": 1}
    assert dispatcher.events == []
    assert dead_letters.letters == []


def test_one_bad_record_in_the_middle_does_not_stop_the_others(
    pipeline, dispatcher, dead_letters, load_event
):
    batch = [
        load_event("post_insert"),
        load_event("follow_insert"),
        load_event("bad_post_created_at"),
        load_event("user_profile_insert"),
        load_event("follow_remove"),
    ]

    outcome = pipeline.handle(batch, SOURCE)

    assert [type(e) for e in dispatcher.events] == [PostPublished, FollowStarted, FollowEnded]
    assert len(dead_letters.letters) == 1
    assert dead_letters.letters[0][2] is batch[2]
    assert "created_at" in dead_letters.letters[0][1]
    assert outcome.ignored == {"user": 1}
    assert (outcome.records, outcome.dispatched, outcome.dead_lettered) == (5, 3, 1)


def test_excluded_visibilities_are_the_pipelines(dead_letters, load_event):
    dispatcher = FakeDispatcher()
    pipeline = RecordPipeline(dispatcher, dead_letters, excluded_visibilities=frozenset())

    outcome = pipeline.handle([load_event("post_modify_private")], SOURCE)

    assert dispatcher.events == []
    assert outcome.ignored == {"post": 1}


def test_an_empty_batch_does_nothing(pipeline, dispatcher, dead_letters):
    outcome = pipeline.handle([], SOURCE)

    assert (outcome.records, outcome.dispatched, outcome.messages, outcome.dead_lettered) == (0, 0, 0, 0)
    assert dispatcher.events == [] and dead_letters.letters == []


def test_a_broker_failure_is_raised_so_nothing_is_acknowledged(dead_letters, load_event):
    pipeline = RecordPipeline(FakeDispatcher(fail=True), dead_letters, frozenset({"private"}))

    with pytest.raises(ConnectionError):
        pipeline.handle([load_event("post_insert")], SOURCE)
