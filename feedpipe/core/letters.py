"""Dead letters as stored: a payload encoded so it comes back exactly, and cut to a bound.

A payload is whatever could not be handled: a stream record (bytes nested anywhere: a Kinesis
record's ``data``, DynamoDB ``B`` and ``BS`` attributes, datetimes from boto3), a task's JSON
event, a regen job's raw bytes. JSON cannot hold bytes or datetimes, so they are tagged objects
(``{"__bytes_b64__": …}``, ``{"__datetime__": …}``) decoded back at every depth, not only the top.

A payload larger than the bound keeps only what names it (the record's keys, event name,
sequence number, Kinesis partition key), with the sha256 and size of the whole encoding, and is
marked ``truncated``: replay cannot resend it, an operator can still find the record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple


class DeadLetter(NamedTuple):
    """What could not be handled, where it came from (``stream:{shard}``, ``task:{name}``,
    ``regen``), and why."""

    source: str
    reason: str
    payload: Any


BYTES_TAG = "__bytes_b64__"
DATETIME_TAG = "__datetime__"
REASON_MAX_CHARS = 2000  # a reason is a message, not a second payload
_IDENTITY_FIELDS = ("eventID", "eventName", "eventSource", "eventSourceARN")
_BODY_FIELDS = ("Keys", "SequenceNumber", "ApproximateCreationDateTime", "SizeBytes")
_KINESIS_FIELDS = ("partitionKey", "sequenceNumber")
_JSON_DEPTH_GUARD = (RecursionError, ValueError, TypeError)


@dataclass(frozen=True, slots=True)
class StoredPayload:
    """A payload as a letter holds it: JSON text, and what was cut when it was too large."""

    text: str
    truncated: bool = False
    original_bytes: int = 0
    sha256: str = ""


def _tag(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {BYTES_TAG: base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return {DATETIME_TAG: value.isoformat()}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return repr(value)


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get(BYTES_TAG), str):
        try:
            return base64.b64decode(obj[BYTES_TAG], validate=True)
        except (binascii.Error, ValueError):
            return obj
    if len(obj) == 1 and isinstance(obj.get(DATETIME_TAG), str):
        try:
            return datetime.fromisoformat(obj[DATETIME_TAG])
        except ValueError:
            return obj
    return obj


def encode_payload(payload: Any) -> str:
    """``payload`` as JSON text that ``decode_payload`` turns back into an equal value."""
    try:
        return json.dumps(payload, default=_tag, separators=(",", ":"))
    except _JSON_DEPTH_GUARD as exc:  # nested past the encoder's reach: its repr stands in
        return json.dumps(f"unencodable payload ({type(exc).__name__}): {repr(payload)[:REASON_MAX_CHARS]}")


def decode_payload(payload: Any) -> Any:
    """A payload as it was received, from its stored JSON (parsed): tags undone at every depth."""
    try:
        return json.loads(json.dumps(payload), object_hook=_untag)
    except _JSON_DEPTH_GUARD:
        return payload


def bound_payload(payload: Any, max_bytes: int) -> StoredPayload:
    """The payload's encoding when it fits in ``max_bytes``, else its identifying parts."""
    text = encode_payload(payload)
    size = len(text.encode())
    if size <= max_bytes:
        return StoredPayload(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    identity = encode_payload(identify(payload))
    if len(identity.encode()) > max_bytes:  # keys as large as the bound: the digest must do
        identity = "{}"
    return StoredPayload(identity, truncated=True, original_bytes=size, sha256=digest)


def identify(payload: Any) -> dict[str, Any]:
    """What names a record, whatever shape it has: its keys, event name, sequence numbers."""
    if not isinstance(payload, Mapping):
        return {"type": type(payload).__name__}
    found: dict[str, Any] = {k: payload[k] for k in _IDENTITY_FIELDS if k in payload}
    body = payload.get("dynamodb")
    if isinstance(body, Mapping):
        found["dynamodb"] = {k: body[k] for k in _BODY_FIELDS if k in body}
    kinesis = payload.get("kinesis")
    if isinstance(kinesis, Mapping):
        found["kinesis"] = {k: kinesis[k] for k in _KINESIS_FIELDS if k in kinesis}
        inner = _kinesis_change(kinesis.get("data"))
        if inner is not None:
            found["change"] = identify(inner)
    return found


def _kinesis_change(data: Any) -> Any:
    """The change record a Kinesis record's data holds, when it can be read."""
    try:
        raw = data if isinstance(data, bytes) else base64.b64decode(str(data), validate=True)
        return json.loads(raw)
    except (*_JSON_DEPTH_GUARD, binascii.Error):
        return None


def bound_reason(reason: str) -> str:
    return reason if len(reason) <= REASON_MAX_CHARS else reason[:REASON_MAX_CHARS] + "…"
