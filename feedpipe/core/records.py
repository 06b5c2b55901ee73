"""Stream records (DynamoDB Streams, Lambda, or Kinesis JSON) to typed events.

Two shapes arrive: a DynamoDB Streams record (``{"eventName", "dynamodb": {...}}``, from
GetRecords or a Lambda event), and a Kinesis record (``{"kinesis": {"data", "sequenceNumber"}}``,
from GetRecords or a Lambda event) whose data is the JSON DynamoDB streams into Kinesis.
``unwrap_record`` turns the second into the first.

``read_record`` reads a record once, whatever it holds, into an ``Envelope``: its position
and time in the shard, its event name and entity, and what it means (an event, an ``Ignored``,
or the reason it is a dead letter). The consumer, its checkpoints, its lag and its metrics all
use the envelope, never the raw record again. ``parse_record`` is the strict form: it returns
an event or an ``Ignored``, or raises ``RecordError``. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from feedpipe.core import keys
from feedpipe.core.attributes import MAPPINGS, AttributeValueError, from_image
from feedpipe.core.events import (
    CONTENT_PREVIEW_UNITS,
    Event,
    FollowEnded,
    FollowStarted,
    Ignored,
    ParsedRecord,
    Post,
    PostPublished,
    PostRetracted,
    RecordMeta,
)

MAX_ID_LENGTH = 256
MAX_SEQUENCE_LENGTH = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EVENT_NAMES = frozenset({"INSERT", "MODIFY", "REMOVE"})


class RecordError(ValueError):
    """A record feedpipe cannot understand; the message is the dead letter's reason."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One stream record, read once. Exactly one of ``event``, ``ignored`` and ``error`` is set."""

    event_name: str  # INSERT, MODIFY, REMOVE, or "unknown": a bounded label whatever the record holds
    sequence_number: str  # its position in the shard ("" when it holds none)
    time_ms: int | None  # when it reached the stream (Kinesis: arrival; Streams: the change's time)
    entity: str  # post, follow, user, feed, other; "unparseable" with an error
    event: Event | None = None
    ignored: Ignored | None = None
    error: str | None = None  # the dead letter's reason
    unexpected: Exception | None = None  # a parser bug, not a bad record: its traceback is worth a log


def read_record(record: Any, excluded_visibilities: Collection[str] = ("private",)) -> Envelope:
    """Everything feedpipe needs from one record, read once; never raises."""
    sequence, time_ms = record_position(record)
    name = "unknown"
    try:  # from the first read of the record on: nothing it holds may escape this
        change = unwrap_record(record)
        given = change.get("eventName")
        name = given if isinstance(given, str) and given in _EVENT_NAMES else "unknown"
        parsed = parse_change(change, excluded_visibilities)
    except Exception as exc:  # RecordError, or a parser bug: either way the shard moves on
        if isinstance(exc, RecordError):
            return Envelope(name, sequence, time_ms, "unparseable", error=str(exc))
        reason = f"unexpected {type(exc).__name__}: {exc}"
        return Envelope(name, sequence, time_ms, "unparseable", error=reason, unexpected=exc)
    if isinstance(parsed, Ignored):
        return Envelope(name, sequence, time_ms, parsed.entity, ignored=parsed)
    return Envelope(name, sequence, time_ms, "post" if parsed.kind.startswith("post") else "follow", event=parsed)


def parse_record(record: Any, excluded_visibilities: Collection[str] = ("private",)) -> ParsedRecord:
    """What one stream record means for feeds."""
    return parse_change(unwrap_record(record), excluded_visibilities)


def parse_change(record: Mapping[str, Any], excluded_visibilities: Collection[str] = ("private",)) -> ParsedRecord:
    """What one change (a record ``unwrap_record`` gave) means for feeds."""
    name = record.get("eventName")
    if name not in _EVENT_NAMES:
        raise RecordError(f"unknown eventName {name!r}")
    body = record.get("dynamodb")
    if not isinstance(body, MAPPINGS):
        raise RecordError("record has no 'dynamodb' section")
    try:
        key = from_image(body.get("Keys"))
    except AttributeValueError as exc:
        raise RecordError(f"bad Keys: {exc}") from exc
    pk, sk = key.get("PK"), key.get("SK")
    if not isinstance(pk, str) or not isinstance(sk, str):
        raise RecordError("Keys lack a string PK and SK")
    if pk.startswith(keys.FEED_PREFIX):  # most records of a busy table: fan-out's own writes
        return Ignored("feed", "feed item written by feedpipe")
    if pk.startswith(keys.POST_PREFIX) and sk == keys.POST_SK:
        return _parse_post(name, body, _meta(record, body), frozenset(excluded_visibilities))
    if pk.startswith(keys.USER_PREFIX) and sk.startswith(keys.FOLLOWING_PREFIX):
        return _parse_follow(name, pk, sk, _meta(record, body))
    if pk.startswith(keys.USER_PREFIX) and sk == keys.PROFILE_SK:
        return Ignored("user", "user profile change")
    return Ignored("other", "not a post, follow or user")


def unwrap_record(record: Any) -> Mapping[str, Any]:
    """The DynamoDB change a record carries, in the DynamoDB Streams shape. A Kinesis record's
    data (bytes, or base64 text as in a Lambda event) is decoded, and its Kinesis sequence
    number becomes the change's ``SequenceNumber``."""
    if not isinstance(record, MAPPINGS):
        raise RecordError("record is not an object")
    kinesis = record.get("kinesis")
    if kinesis is None:
        return record
    if not isinstance(kinesis, MAPPINGS):
        raise RecordError("'kinesis' section is not an object")
    data = kinesis.get("data")
    try:
        raw = data if isinstance(data, bytes) else base64.b64decode(str(data), validate=True)
        inner = json.loads(raw)
    except RecursionError:
        raise RecordError("Kinesis data nests too deep to parse") from None
    except (ValueError, TypeError) as exc:
        raise RecordError(f"Kinesis data is not base64 JSON: {exc}") from exc
    if not isinstance(inner, dict) or not isinstance(inner.get("dynamodb"), dict):
        raise RecordError("Kinesis data is not a DynamoDB change record")
    inner["dynamodb"] = {**inner["dynamodb"], "SequenceNumber": _short_text(kinesis.get("sequenceNumber"))}
    return inner


def record_position(record: Any) -> tuple[str, int | None]:
    """A record's sequence number in its shard and its time in epoch ms, read from its outer
    shape without decoding it (Kinesis data stays unread): ``("", None)`` for what holds none,
    whatever the record is, so a record that is a dead letter still has its place."""
    if not isinstance(record, MAPPINGS):
        return "", None
    kinesis, body = record.get("kinesis"), record.get("dynamodb")
    if isinstance(kinesis, MAPPINGS):
        return _short_text(kinesis.get("sequenceNumber")), moment_ms(kinesis.get("approximateArrivalTimestamp"))
    if isinstance(body, MAPPINGS):
        return _short_text(body.get("SequenceNumber")), moment_ms(body.get("ApproximateCreationDateTime"))
    return "", None


def record_sequence(record: Any) -> str:
    """A record's position in its shard, whichever shape it has."""
    return record_position(record)[0]


def _short_text(value: Any) -> str:
    """A sequence number or event id as bounded text; anything but a string or an integer is
    none at all (``str`` of a deeply nested value would itself overflow the stack)."""
    if isinstance(value, str):
        return value[:MAX_SEQUENCE_LENGTH]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)[:MAX_SEQUENCE_LENGTH]
    return ""


def _meta(record: Mapping[str, Any], body: Mapping[str, Any]) -> RecordMeta:
    return RecordMeta(
        event_id=_short_text(record.get("eventID")),
        sequence_number=_short_text(body.get("SequenceNumber")),
        approximate_ms=moment_ms(body.get("ApproximateCreationDateTime")),
    )


LAST_MOMENT_MS = 253_402_300_800_000  # 10000-01-01: a record's time is after 1970 and before this


def moment_ms(value: Any) -> int | None:
    """A record's approximate time in epoch ms, or None when it holds no usable moment.
    Streams give seconds (a ``datetime`` through boto3); DynamoDB-to-Kinesis gives milliseconds."""
    if isinstance(value, datetime):
        return _epoch_ms(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        if not math.isfinite(value):
            return None
    except OverflowError:  # an int no float can hold: JSON decodes a 400-digit number to one
        return None
    ms = value * 1000 if value < 1e11 else value  # -1e306 s: finite, its ms are not (-inf)
    return int(ms) if 0 <= ms < LAST_MOMENT_MS else None


def _image(body: Mapping[str, Any], which: str) -> dict[str, Any] | None:
    raw = body.get(which)
    if raw is None:
        return None
    try:
        return from_image(raw)
    except AttributeValueError as exc:
        raise RecordError(f"bad {which}: {exc}") from exc


def _parse_post(
    name: str, body: Mapping[str, Any], meta: RecordMeta, excluded: frozenset[str]
) -> ParsedRecord:
    new, old = _image(body, "NewImage"), _image(body, "OldImage")
    if name == "INSERT":
        if new is None:
            raise RecordError("post INSERT without NewImage")
        if not is_live(new, excluded):
            return Ignored("post", "post created deleted or hidden")
        return PostPublished(post_from_image(new), meta)
    if name == "REMOVE":
        if old is None:
            raise RecordError("post REMOVE without OldImage: its feed items cannot be located")
        return PostRetracted(post_from_image(old), meta)
    if new is None:
        raise RecordError("post MODIFY without NewImage")
    was_live = None if old is None else is_live(old, excluded)
    now_live = is_live(new, excluded)
    if not now_live and was_live is not False:
        return PostRetracted(post_from_image(new), meta)
    if now_live and was_live is False:
        return PostPublished(post_from_image(new), meta)
    return Ignored("post", "post edit that changes no feed")


def _parse_follow(name: str, pk: str, sk: str, meta: RecordMeta) -> ParsedRecord:
    follower = validate_id(keys.strip_prefix(pk, keys.USER_PREFIX), "follower id")
    followed = validate_id(keys.strip_prefix(sk, keys.FOLLOWING_PREFIX), "followed id")
    if name == "INSERT":
        return FollowStarted(follower, followed, meta)
    if name == "REMOVE":
        return FollowEnded(follower, followed, meta)
    return Ignored("follow", "follow edge update")


def is_live(image: Mapping[str, Any], excluded: Collection[str]) -> bool:
    """Whether a post image belongs in feeds: not soft-deleted, visibility not excluded (a
    visibility that is not a string is taken as is: it cannot name an excluded one)."""
    visibility = image.get("visibility")
    return image.get("is_deleted") is not True and not (isinstance(visibility, str) and visibility in excluded)


def post_from_image(image: Mapping[str, Any]) -> Post:
    """A post's immutable fields from its item; RecordError names the first missing or bad one."""
    pk_id = keys.strip_prefix(str(image.get("PK", "")), keys.POST_PREFIX)
    post_id = validate_id(image.get("post_id", pk_id), "post_id")
    if pk_id is not None and pk_id != post_id:
        raise RecordError(f"post_id {post_id!r} does not match PK")
    author_id = validate_id(image.get("author_id"), "author_id")
    created_at = image.get("created_at")
    if not isinstance(created_at, str):
        raise RecordError("post has no string created_at")
    content = image.get("content", "")
    if not isinstance(content, str):
        raise RecordError("post content is not a string")
    score = image.get("engagement_score", 0)
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise RecordError("engagement_score is not a number")
    return Post(
        post_id=post_id,
        author_id=author_id,
        author_username=_text(image.get("author_username", ""), "author_username"),
        content_preview=cut_preview(content),
        content_type=_text(image.get("content_type", "text"), "content_type"),
        created_at=created_at,
        created_at_ms=parse_timestamp_ms(created_at),
        engagement_score=score,
        is_promoted=image.get("is_promoted") is True,
    )


def cut_preview(content: str) -> str:
    """The app's preview, ``content.substring(0, 200)``: JavaScript counts UTF-16 code units, so
    a character outside the BMP (an emoji) takes two. A pair unit 200 would split is left out
    whole rather than halved (a lone surrogate is not valid UTF-8, and DynamoDB rejects it)."""
    head = content[:CONTENT_PREVIEW_UNITS]
    if head.isascii() or len(head.encode("utf-16-le", "surrogatepass")) == 2 * len(head):
        return head  # every character of it one unit: the common case, without a loop
    units = 0
    for index, char in enumerate(content):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > CONTENT_PREVIEW_UNITS:
            return content[:index]
    return content


def post_from_feed_item(item: Mapping[str, Any]) -> Post:
    """The post a durable feed item was built from (feed items carry every immutable field)."""
    created_at = str(item.get("created_at", ""))
    return Post(
        post_id=validate_id(item.get("post_id"), "post_id"),
        author_id=validate_id(item.get("author_id"), "author_id"),
        author_username=str(item.get("author_username", "")),
        content_preview=str(item.get("content_preview", "")),
        content_type=str(item.get("content_type", "text")),
        created_at=created_at,
        created_at_ms=parse_timestamp_ms(created_at),
        engagement_score=item.get("engagement_score", 0),
        is_promoted=item.get("is_promoted") is True,
    )


def validate_id(value: Any, what: str) -> str:
    """An id safe to put in a key: a non-empty string, bounded, without control characters."""
    if not isinstance(value, str) or not value:
        raise RecordError(f"missing or non-string {what}")
    if len(value) > MAX_ID_LENGTH:
        raise RecordError(f"{what} longer than {MAX_ID_LENGTH} characters")
    if _CONTROL.search(value):
        raise RecordError(f"{what} contains control characters")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} is not a string")
    return value[:MAX_ID_LENGTH]


def parse_timestamp_ms(text: str) -> int:
    """ISO-8601 (as the app writes ``created_at``) to epoch milliseconds; naive means UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise RecordError(f"created_at {text[:40]!r} is not ISO-8601") from exc
    return _epoch_ms(moment)


def _epoch_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)
