"""``parse_record`` on the sample stream records in ``tests/events/``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from feedpipe.core.events import (
    FollowEnded,
    FollowStarted,
    Ignored,
    Post,
    PostPublished,
    PostRetracted,
    event_from_payload,
    to_payload,
)
from feedpipe.core.records import RecordError, parse_record, parse_timestamp_ms

POST_ID = "post_1705314600121_u_alice"
CREATED_AT = "2024-01-15T10:30:00.123Z"
CREATED_AT_MS = 1705314600123


def _content(record: dict) -> str:
    image = record["dynamodb"].get("NewImage") or record["dynamodb"]["OldImage"]
    return image["content"]["S"]


def _rekey_post(record: dict, post_id: str, author_id: str) -> dict:
    """The same post under other ids, everywhere the app writes them."""
    body = record["dynamodb"]
    body["Keys"]["PK"] = {"S": f"POST#{post_id}"}
    for image in (body.get("NewImage"), body.get("OldImage")):
        if image:
            image["PK"] = {"S": f"POST#{post_id}"}
            image["post_id"] = {"S": post_id}
            image["author_id"] = {"S": author_id}
            image["GSI1PK"] = {"S": f"USER#{author_id}"}
    return record


# -- posts -----------------------------------------------------------------------------------


def test_post_insert_publishes_the_post_with_its_immutable_fields(load_event):
    record = load_event("post_insert")

    event = parse_record(record)

    assert isinstance(event, PostPublished)
    assert event.post == Post(
        post_id=POST_ID,
        author_id="u_alice",
        author_username="alice",
        content_preview=_content(record)[:200],
        content_type="text",
        created_at=CREATED_AT,
        created_at_ms=CREATED_AT_MS,
        engagement_score=0,
        is_promoted=False,
    )


def test_post_insert_preview_is_the_first_200_characters(load_event):
    record = load_event("post_insert")
    content = _content(record)
    assert len(content) > 200  # the sample must be long enough to be cut

    post = parse_record(record).post

    assert len(post.content_preview) == 200
    assert content.startswith(post.content_preview)


def test_post_insert_carries_where_the_record_came_from(load_event):
    event = parse_record(load_event("post_insert"))

    assert event.meta.event_id == "c4ca4238a0b923820dcc509a6f75849b"
    assert event.meta.sequence_number == "100000000000000000001"
    assert event.meta.approximate_ms == 1705314600_000


def test_approximate_time_as_boto3_returns_it_a_datetime(load_event):
    record = load_event("post_insert")
    record["dynamodb"]["ApproximateCreationDateTime"] = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)

    assert parse_record(record).meta.approximate_ms == 1705314600_000


@pytest.mark.parametrize("name", ["post_modify_deleted", "post_modify_private"])
def test_post_modified_out_of_feeds_is_retracted(load_event, name):
    event = parse_record(load_event(name))

    assert isinstance(event, PostRetracted)
    assert (event.post.post_id, event.post.author_id) == (POST_ID, "u_alice")
    assert event.post.created_at_ms == CREATED_AT_MS


def test_private_is_only_retracted_while_private_is_excluded(load_event):
    event = parse_record(load_event("post_modify_private"), excluded_visibilities=())

    assert isinstance(event, Ignored)
    assert event.entity == "post"


def test_post_restored_from_deleted_is_published_again(load_event):
    record = load_event("post_modify_deleted")
    body = record["dynamodb"]
    body["NewImage"], body["OldImage"] = body["OldImage"], body["NewImage"]

    event = parse_record(record)

    assert isinstance(event, PostPublished)
    assert event.post.post_id == POST_ID


def test_post_inserted_already_deleted_is_ignored(load_event):
    record = load_event("post_insert")
    record["dynamodb"]["NewImage"]["is_deleted"] = {"BOOL": True}

    event = parse_record(record)

    assert isinstance(event, Ignored)
    assert event.entity == "post"


def test_post_likes_change_is_ignored_as_a_post_edit(load_event):
    event = parse_record(load_event("post_modify_likes"))

    assert isinstance(event, Ignored)
    assert event.entity == "post"


def test_post_remove_retracts_the_post_from_its_old_image(load_event):
    event = parse_record(load_event("post_remove"))

    assert isinstance(event, PostRetracted)
    assert event.post.post_id == POST_ID
    assert event.post.author_id == "u_alice"
    assert event.post.created_at == CREATED_AT
    assert event.post.created_at_ms == CREATED_AT_MS


# -- follows, users, feed items --------------------------------------------------------------


def test_follow_insert_starts_a_follow(load_event):
    event = parse_record(load_event("follow_insert"))

    assert isinstance(event, FollowStarted)
    assert (event.follower_id, event.followed_id) == ("u_bob", "u_alice")


def test_follow_remove_ends_a_follow(load_event):
    event = parse_record(load_event("follow_remove"))

    assert isinstance(event, FollowEnded)
    assert (event.follower_id, event.followed_id) == ("u_bob", "u_alice")


@pytest.mark.parametrize(
    ("name", "entity"),
    [
        ("follow_modify", "follow"),
        ("user_profile_insert", "user"),
        ("feed_item_insert", "feed"),
    ],
)
def test_records_without_feed_effect_are_ignored_by_entity(load_event, name, entity):
    event = parse_record(load_event(name))

    assert isinstance(event, Ignored)
    assert event.entity == entity
    assert event.reason


def test_unrelated_item_is_ignored_as_other(load_event):
    record = load_event("user_profile_insert")
    record["dynamodb"]["Keys"] = {"PK": {"S": "HASHTAG#coffee"}, "SK": {"S": "COUNT"}}

    event = parse_record(record)

    assert isinstance(event, Ignored)
    assert event.entity == "other"


# -- ids kept verbatim ------------------------------------------------------------------------


@pytest.mark.parametrize("odd", ["p#1", "p:1", "p*1", "p{1}", "a#b:c*{d}"])
def test_post_ids_with_key_metacharacters_are_kept_verbatim(load_event, odd):
    record = _rekey_post(load_event("post_insert"), post_id=odd, author_id=f"u_{odd}")

    event = parse_record(record)

    assert isinstance(event, PostPublished)
    assert event.post.post_id == odd
    assert event.post.author_id == f"u_{odd}"


@pytest.mark.parametrize("odd", ["u#1", "u:1", "u*1", "u{1}", "a#b:c*{d}"])
def test_follow_ids_with_key_metacharacters_are_kept_verbatim(load_event, odd):
    record = load_event("follow_insert")
    record["dynamodb"]["Keys"] = {"PK": {"S": f"USER#{odd}"}, "SK": {"S": f"FOLLOWING#{odd}x"}}

    event = parse_record(record)

    assert isinstance(event, FollowStarted)
    assert (event.follower_id, event.followed_id) == (odd, f"{odd}x")


# -- malformed records -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("bad_missing_dynamodb", ["dynamodb"]),
        ("bad_event_name", ["eventName", "UPSERT"]),
        ("bad_keys_missing_sk", ["Keys", "SK"]),
        ("bad_post_missing_author", ["author_id"]),
        ("bad_post_created_at", ["created_at", "15/01/2024 10:30"]),
        ("bad_post_remove_without_old_image", ["REMOVE", "OldImage"]),
        ("bad_id_with_newline", ["followed id", "control characters"]),
        ("bad_unknown_type_tag", ["NewImage", "STRING"]),
    ],
)
def test_malformed_record_raises_record_error_saying_why(load_event, name, words):
    with pytest.raises(RecordError) as caught:
        parse_record(load_event(name))

    reason = str(caught.value)
    for word in words:
        assert word in reason
    assert "\n" not in reason  # a dead letter's reason is one line


def test_post_id_with_a_newline_is_refused(load_event):
    record = _rekey_post(load_event("post_insert"), post_id="p1\nEVIL", author_id="u_alice")

    with pytest.raises(RecordError, match="post_id contains control characters"):
        parse_record(record)


@pytest.mark.parametrize("record", [None, "INSERT", [], 42])
def test_a_record_that_is_not_an_object_is_refused(record):
    with pytest.raises(RecordError, match="not an object"):
        parse_record(record)


# -- timestamps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15T10:30:00.123Z", 1705314600123),  # JavaScript's toISOString
        ("2024-01-15T10:30:00.123+00:00", 1705314600123),
        ("2024-01-15T10:30:00.123", 1705314600123),  # naive means UTC
        ("2024-01-15T10:30:00Z", 1705314600000),
        ("2024-01-15T10:30:00.5Z", 1705314600500),
        ("2024-01-15T10:30:00.123999Z", 1705314600123),  # microseconds truncated to ms
        ("2024-01-15T12:30:00.123+02:00", 1705314600123),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_parse_timestamp_ms(text, expected):
    assert parse_timestamp_ms(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "15/01/2024 10:30", "2024-13-45T10:30:00Z"])
def test_parse_timestamp_ms_refuses_what_is_not_iso_8601(text):
    with pytest.raises(RecordError, match="not ISO-8601"):
        parse_timestamp_ms(text)


# -- task payloads -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["post_insert", "post_remove", "follow_insert", "follow_remove"])
def test_parsed_events_survive_a_json_round_trip_as_task_payloads(load_event, name):
    event = parse_record(load_event(name))

    payload = json.loads(json.dumps(to_payload(event)))

    assert event_from_payload(payload) == event


@pytest.mark.parametrize("name", ["post_insert", "post_remove", "follow_insert", "follow_remove"])
def test_a_payload_is_what_asdict_made_key_for_key_and_in_order(load_event, name):
    """The message bytes a worker receives stay as they were before ``to_payload`` stopped
    calling ``dataclasses.asdict``."""
    from dataclasses import asdict

    event = parse_record(load_event(name))
    assert json.dumps(to_payload(event)) == json.dumps({**asdict(event), "type": event.kind})


# -- read once: the envelope ---------------------------------------------------------------------


def test_an_envelope_carries_a_records_place_name_entity_and_event(load_event):
    from feedpipe.core.records import read_record

    record = load_event("post_insert")
    envelope = read_record(record)
    assert (envelope.event_name, envelope.entity) == ("INSERT", "post")
    assert envelope.sequence_number == record["dynamodb"]["SequenceNumber"]
    assert isinstance(envelope.event, PostPublished) and envelope.ignored is None and envelope.error is None
    assert envelope.time_ms == int(record["dynamodb"]["ApproximateCreationDateTime"] * 1000)


def test_an_unreadable_record_keeps_its_place_in_the_shard():
    from feedpipe.core.records import read_record

    envelope = read_record({"eventName": "DROP", "dynamodb": {"SequenceNumber": "0042"}})
    assert (envelope.event_name, envelope.entity, envelope.sequence_number) == ("unknown", "unparseable", "0042")
    assert envelope.error == "unknown eventName 'DROP'" and not envelope.unexpected and envelope.event is None
    assert read_record(["not", "a", "record"]).sequence_number == ""


def test_chunk_and_resume_messages_round_trip_through_their_payloads():
    import json as json_

    from feedpipe.core.events import PayloadError, event_from_payload
    from feedpipe.core.messages import Resume, chunk_payload, followers_of, resume_of, resume_payload

    post = Post("p1", "a", "ann", "hi", "text", "2024-01-15T10:30:00.123Z", 1705314600123)
    for event in (PostPublished(post), PostRetracted(post)):
        chunk = json_.loads(json_.dumps(chunk_payload(event, ["f1", "f2"])))  # as the broker carries it
        assert event_from_payload(chunk) == event and followers_of(chunk) == ["f1", "f2"]
        resume = Resume({"GSI1PK": {"S": "USER#a"}, "GSI1SK": {"S": "FOLLOWER#f9"}}, 1000)
        handed_on = json_.loads(json_.dumps(resume_payload(event, resume)))
        assert event_from_payload(handed_on) == event and resume_of(handed_on) == resume
        assert resume_of(to_payload(event)) is None
    with pytest.raises(PayloadError, match="follower ids"):
        followers_of({"followers": "f1"})
    with pytest.raises(PayloadError, match="start key"):
        resume_of({"resume": {"start": {"GSI1PK": "USER#a"}, "walked": 3}})


@pytest.mark.parametrize("moment", [10**400, -(10**400), -1e306, 1e300, -5.0],
                         ids=["huge", "hugely-negative", "float-overflowing-ms", "centuries-ahead", "before-1970"])
def test_a_time_no_float_can_hold_is_no_time_and_the_record_is_still_read(load_event, moment):
    """JSON decodes a 400-digit number to an int, and ``-1e306`` seconds is a finite float whose
    milliseconds are not; ``read_record`` raised OverflowError on both, outside its own guard (a
    poison record that stopped the consumer instead of moving on). A time before 1970 or past
    the year 9999 is no time either."""
    from feedpipe.core.records import read_record

    record = load_event("post_insert")
    record["dynamodb"]["ApproximateCreationDateTime"] = moment
    envelope = read_record(record)
    assert envelope.time_ms is None and envelope.error is None
    assert isinstance(envelope.event, PostPublished) and envelope.event.meta.approximate_ms is None
