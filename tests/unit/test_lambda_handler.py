"""The Lambda handler: a stream event in, ``batchItemFailures`` out, over in-memory fakes.

The sample events (``tests/events/lambda_*.json``) are batches as Lambda delivers them, each
with a poison record in the middle.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from kombu.exceptions import OperationalError

from feedpipe.config import ConfigError, Settings
from feedpipe.consumers import lambda_handler
from feedpipe.consumers.lambda_handler import EventShapeError, handler, process_event
from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.core.events import Event, FollowEnded, FollowStarted, PostPublished, PostRetracted
from tests.fakes import FakeDeadLetters, FakeDispatcher, brackets, kinesis_record, nested_change

DYNAMODB = "lambda_dynamodb_streams"
KINESIS = "lambda_kinesis"
# Which records of each sample become events, and which is the poison.
DYNAMODB_EVENTS = {0: PostPublished, 1: FollowStarted, 4: PostPublished, 5: FollowEnded, 6: PostRetracted}
DYNAMODB_POISON = 2  # a post INSERT without author_id; record 3 is a likes-only edit (ignored)
KINESIS_EVENTS = {0: PostPublished, 1: FollowStarted, 3: PostPublished, 4: FollowEnded}
KINESIS_POISON = 2  # data that is not base64 JSON
SAMPLES = {DYNAMODB: (DYNAMODB_EVENTS, DYNAMODB_POISON), KINESIS: (KINESIS_EVENTS, KINESIS_POISON)}


class RefusingDispatcher:
    """Takes each dispatch whole or not at all (like one broker message), and refuses any that
    holds the event of the record with sequence number ``refuse``."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.events: list[Event] = []
        self.calls = 0

    def dispatch(self, events: Sequence[Event]) -> int:
        self.calls += 1
        if any(e.meta.sequence_number == self.refuse for e in events):
            raise OperationalError("broker refused the message")
        self.events.extend(events)
        return 1


class BrokenDeadLetters:
    def add_many(self, letters: Sequence[tuple[str, str, Any]]) -> None:
        raise ConnectionError("dead-letter store unreachable")


def make_pipeline(dispatcher: Any, dead_letters: Any = None) -> RecordPipeline:
    return RecordPipeline(dispatcher, dead_letters or FakeDeadLetters(), {"private"})


def sequences(event: dict[str, Any]) -> list[str]:
    out = []
    for record in event["Records"]:
        kinesis = record.get("kinesis")
        out.append(kinesis["sequenceNumber"] if kinesis else record["dynamodb"]["SequenceNumber"])
    return out


def dispatched(events: list[Event]) -> list[tuple[type, str]]:
    return [(type(e), e.meta.sequence_number) for e in events]


def expected(event: dict[str, Any], kinds: dict[int, type], before: int | None = None) -> list[tuple[type, str]]:
    seqs = sequences(event)
    return [(kind, seqs[i]) for i, kind in sorted(kinds.items()) if before is None or i < before]


@pytest.fixture(autouse=True)
def _fresh_container() -> Any:
    lambda_handler.reset_pipeline()
    yield
    lambda_handler.reset_pipeline()


@pytest.mark.parametrize("sample", [DYNAMODB, KINESIS])
def test_a_poison_record_is_dead_lettered_and_the_batch_succeeds_in_one_publish(sample, load_event):
    event = load_event(sample)
    kinds, poison = SAMPLES[sample]
    dispatcher, letters = RefusingDispatcher(), FakeDeadLetters()

    response = process_event(event, make_pipeline(dispatcher, letters))

    assert response == {"batchItemFailures": []}
    assert dispatched(dispatcher.events) == expected(event, kinds)
    assert dispatcher.calls == 1
    [(source, reason, record)] = letters.letters
    assert record == event["Records"][poison]
    assert source == f"stream:{event['Records'][0]['eventSourceARN']}"
    if sample == DYNAMODB:
        assert reason == "missing or non-string author_id"
    else:
        assert reason.startswith("Kinesis data is not base64 JSON")


@pytest.mark.parametrize(
    ("sample", "k"),
    [(DYNAMODB, k) for k in DYNAMODB_EVENTS] + [(KINESIS, k) for k in KINESIS_EVENTS],
)
def test_a_failed_dispatch_at_record_k_reports_exactly_record_k(sample, k, load_event):
    event = load_event(sample)
    kinds, poison = SAMPLES[sample]
    seqs = sequences(event)
    dispatcher, letters = RefusingDispatcher(refuse=seqs[k]), FakeDeadLetters()

    response = process_event(event, make_pipeline(dispatcher, letters))

    assert response == {"batchItemFailures": [{"itemIdentifier": seqs[k]}]}
    # Records before k were dispatched exactly once, none after it.
    assert dispatched(dispatcher.events) == expected(event, kinds, before=k)
    # The poison's letter is stored once: by the record-by-record pass when it lies before k,
    # else already by the failed whole-batch pass (a retry from k stores it again: dead letters
    # are at-least-once, like everything else here).
    assert [r for _, _, r in letters.letters] == [event["Records"][poison]]


def test_a_transient_broker_failure_is_recovered_record_by_record(load_event):
    event = load_event(DYNAMODB)
    dispatcher, letters = FakeDispatcher(fail_next=1), FakeDeadLetters()

    response = process_event(event, make_pipeline(dispatcher, letters))

    assert response == {"batchItemFailures": []}
    assert dispatched(dispatcher.events) == expected(event, DYNAMODB_EVENTS)
    assert len(letters.letters) == 1


def test_a_broker_that_is_down_fails_from_the_first_record(load_event):
    event = load_event(KINESIS)
    dispatcher = FakeDispatcher(fail_next=100)

    response = process_event(event, make_pipeline(dispatcher))

    assert response == {"batchItemFailures": [{"itemIdentifier": sequences(event)[0]}]}
    assert dispatcher.events == []
    assert dispatcher.fail_next == 98  # the batch and the first record: no more publishes tried


def test_a_dead_letter_store_that_is_down_fails_at_the_poison_record(load_event):
    event = load_event(DYNAMODB)
    dispatcher = RefusingDispatcher()

    response = process_event(event, make_pipeline(dispatcher, BrokenDeadLetters()))

    assert response == {"batchItemFailures": [{"itemIdentifier": sequences(event)[DYNAMODB_POISON]}]}
    assert dispatched(dispatcher.events) == expected(event, DYNAMODB_EVENTS, before=DYNAMODB_POISON)


def test_an_empty_batch_succeeds():
    dispatcher = RefusingDispatcher()

    assert process_event({"Records": []}, make_pipeline(dispatcher)) == {"batchItemFailures": []}
    assert dispatcher.events == []


@pytest.mark.parametrize("event", [{}, {"Records": None}, {"records": []}, [], "Records", None])
def test_a_malformed_event_raises(event):
    with pytest.raises(EventShapeError, match="no 'Records' list"):
        process_event(event, make_pipeline(RefusingDispatcher()))


def test_one_summary_line_per_invocation(load_event, caplog):
    caplog.set_level(logging.INFO, logger="feedpipe.consumers.lambda_handler")

    process_event(load_event(DYNAMODB), make_pipeline(RefusingDispatcher()))

    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "7 records, 5 dispatched in 1 messages, 1 dead-lettered, 1 ignored, 0 failures" in line


def test_the_handler_builds_the_pipeline_once_per_container(load_event, monkeypatch):
    monkeypatch.setenv("FEEDPIPE_TABLE_NAME", "SocialMediaAppTest")
    dispatcher = RefusingDispatcher()
    built: list[Settings] = []

    def fake_build(settings: Settings) -> RecordPipeline:
        built.append(settings)
        return make_pipeline(dispatcher)

    monkeypatch.setattr(lambda_handler, "build_pipeline", fake_build)
    event = load_event(DYNAMODB)

    first, second = handler(event, None), handler(event, None)

    assert first == second == {"batchItemFailures": []}
    assert [s.table_name for s in built] == ["SocialMediaAppTest"]
    assert dispatched(dispatcher.events) == expected(event, DYNAMODB_EVENTS) * 2


def test_the_handler_fails_every_invocation_on_a_bad_setting(load_event, monkeypatch):
    monkeypatch.setenv("FEEDPIPE_FEED_MAX_LENGTH", "abc")

    def must_not_build(settings: Settings) -> RecordPipeline:
        raise AssertionError("built a pipeline from bad settings")

    monkeypatch.setattr(lambda_handler, "build_pipeline", must_not_build)

    for _ in range(2):
        with pytest.raises(ConfigError) as raised:
            handler(load_event(DYNAMODB), None)
        message = str(raised.value)
        assert message.startswith("bad setting FEEDPIPE_FEED_MAX_LENGTH='abc'")
        assert "\n" not in message


@pytest.mark.parametrize("data", [brackets(200_000), nested_change(400)], ids=["beyond-json-recursion", "deep-maps"])
def test_deeply_nested_kinesis_data_is_dead_lettered_not_failed_for_ever(data):
    """It used to escape the record's error handling: reported as the batch's failure on every
    invocation, so Lambda retried the same record for ever and the shard stood still."""
    good = kinesis_record(3, json.dumps({"eventName": "INSERT", "dynamodb": {
        "Keys": {"PK": {"S": "USER#u1"}, "SK": {"S": "FOLLOWING#a"}}}}).encode(), as_text=True)
    event = {"Records": [kinesis_record(2, data, as_text=True), good]}
    dispatcher, letters = FakeDispatcher(), FakeDeadLetters()

    response = process_event(event, make_pipeline(dispatcher, letters))

    assert response == {"batchItemFailures": []}
    assert [type(e) for e in dispatcher.events] == [FollowStarted]
    [(_, reason, record)] = letters.letters
    assert "nest" in reason and ("too deep" in reason or "deeper than" in reason)
    assert record is event["Records"][0]


def test_a_record_whose_position_is_not_a_sequence_number_is_retried_from_the_batch_start():
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    assert lambda_handler._sequence({"kinesis": {"sequenceNumber": deep}}) == ""
    assert lambda_handler._sequence({"dynamodb": {"SequenceNumber": 12}}) == "12"
