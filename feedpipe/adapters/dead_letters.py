"""Dead letters in feedpipe's own DynamoDB table: durable, bounded in size and in count, paged.

Not in the app's cache Redis: a restart of that Redis must lose no letter, and a burst of large
bad records must not fill its memory and halt the cache writes and the broker beside them.

One partition per store (``{prefix}dlq``), letters sorted by time under it, so a Query reads
them oldest (or newest) first a page at a time. One partition is enough: letters are rare (a
healthy pipeline writes none), and a partition takes 1,000 writes a second, more than any burst
the count bound lets in. A ``COUNT`` item beside the letters is the bound: every add reserves
room on it with a conditional ``ADD``, every removal gives room back, so no read of the whole
store is ever needed. A letter refused for want of room is logged at ERROR and counted
(``feedpipe_dead_letters_dropped_total``, alerted on): the oldest letters are kept, they name
the first failure.

A batch can fail after part of it is stored (a BatchWriteItem leaves items unprocessed, and
the call that retries them fails). Such a batch's letters are remembered by content with their
room and their items: the caller's retry writes only those not stored yet, under the same keys,
and reserves no second room, so no letter is stored twice and the count stays the number of
letters. Should no retry come, the room stays taken until ``purge`` finds the store empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from feedpipe.core import keys
from feedpipe.core.attributes import from_image
from feedpipe.core.letters import DeadLetter, bound_payload, bound_reason, identify
from feedpipe.core.timestamps import now_timestamp

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # letters per Query page: at most 100 x the size bound in memory
_RESERVE_ATTEMPTS = 20
_PENDING_MAX = 10_000  # letters kept for a retry; past it the oldest are forgotten (room stays taken)
UNPROCESSED_BACKOFF_SECONDS = 0.05
Letter = DeadLetter
OnLetter = Callable[[str, str], None]


@dataclass(slots=True)
class _Pending:
    """A letter of a batch not yet wholly stored: its room is taken, its item fixed."""

    item: dict[str, Any]
    stored: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetterLimits:
    max_bytes: int = 65_536
    max_count: int = 100_000


class DeadLetters:
    """A store of what feedpipe could not handle, each with its reason."""

    def __init__(
        self, client: Any, table_name: str, store: str, limits: DeadLetterLimits = DeadLetterLimits(),
        on_letter: OnLetter = lambda source, reason: None, on_drop: OnLetter = lambda source, reason: None,
    ) -> None:
        self.client = client
        self.table = table_name
        self.store = store
        self.limits = limits
        self.on_letter = on_letter
        self.on_drop = on_drop
        self._pending: dict[str, _Pending] = {}  # by identity: letters of a batch that failed midway

    # -- writes ------------------------------------------------------------------------------

    def add(self, source: str, reason: str, payload: Any) -> str | None:
        """Store one letter; its id, or None when the store was full and it was dropped."""
        ids = self._add_all([DeadLetter(source, reason, payload)])
        return ids[0] if ids else None

    def add_many(self, letters: Sequence[Letter]) -> None:
        """Store (source, reason, payload) triples, as many as the count bound has room for."""
        self._add_all(letters)

    def _add_all(self, letters: Sequence[Letter]) -> list[str]:
        if not letters:
            return []
        identities = self._identities(letters)
        fresh = [(identity, letter) for identity, letter in zip(identities, letters, strict=True)
                 if identity not in self._pending]  # the others are a retry's: room already taken
        granted = self._reserve(len(fresh))
        for _, (source, reason, payload) in fresh[granted:]:
            self._drop(source, reason, payload)
        for identity, letter in fresh[:granted]:
            self._pending[identity] = _Pending(self._item(*letter))
        while len(self._pending) > _PENDING_MAX:
            del self._pending[next(iter(self._pending))]
        kept = [(identity, letter) for identity, letter in zip(identities, letters, strict=True)
                if identity in self._pending]
        pending = [self._pending[identity] for identity, _ in kept]
        self._put([p for p in pending if not p.stored])  # raises with what it stored marked
        for identity, (source, reason, _) in kept:
            del self._pending[identity]
            self.on_letter(source, reason)
        return [p.item["id"]["S"] for p in pending]

    def _identities(self, letters: Sequence[Letter]) -> list[str]:
        """Each letter's content digest, numbered among equal ones of the batch."""
        seen: dict[str, int] = {}
        identities = []
        for source, reason, payload in letters:
            text = bound_payload(payload, self.limits.max_bytes).text
            digest = hashlib.sha256("\0".join((source, reason, text)).encode()).hexdigest()
            seen[digest] = seen.get(digest, 0) + 1
            identities.append(f"{digest}:{seen[digest]}")
        return identities

    def _item(self, source: str, reason: str, payload: Any) -> dict[str, Any]:
        at, letter_id = now_timestamp(), uuid.uuid4().hex
        stored = bound_payload(payload, self.limits.max_bytes)
        item: dict[str, Any] = {
            **self._key(keys.letter_sk(at, letter_id)),
            "id": {"S": letter_id}, "at": {"S": at}, "source": {"S": bound_reason(source)},
            "reason": {"S": bound_reason(reason)}, "payload": {"S": stored.text},
        }
        if stored.truncated:
            item.update(truncated={"BOOL": True}, original_bytes={"N": str(stored.original_bytes)},
                        sha256={"S": stored.sha256})
        return item

    def _put(self, letters: list[_Pending]) -> None:
        """Write the letters' items, each marked stored once the table took it."""
        for start in range(0, len(letters), 25):
            chunk = letters[start : start + 25]
            requests: Any = {self.table: [{"PutRequest": {"Item": p.item}} for p in chunk]}
            for attempt in itertools.count():
                requests = self.client.batch_write_item(RequestItems=requests).get("UnprocessedItems")
                left = {r["PutRequest"]["Item"]["letter"]["S"] for r in (requests or {}).get(self.table, [])}
                for p in chunk:
                    p.stored = p.item["letter"]["S"] not in left
                if not requests:
                    break
                time.sleep(min(UNPROCESSED_BACKOFF_SECONDS * 2**attempt, 1.0))  # the table is busy: back off

    def _drop(self, source: str, reason: str, payload: Any) -> None:
        log.error("dead-letter store full (%d letters): dropped a letter from %s: %s; record %s",
                  self.limits.max_count, source, reason, identify(payload))
        self.on_drop(source, reason)

    # -- the count bound ---------------------------------------------------------------------

    def _reserve(self, wanted: int) -> int:
        """Room for up to ``wanted`` letters, taken on the counter atomically; how many."""
        room = self.limits.max_count - wanted
        if room >= 0 and self._try_count(wanted, "attribute_not_exists(#n) OR #n <= :room", {":room": room}):
            return wanted
        for _ in range(_RESERVE_ATTEMPTS):  # nearly full: take what is left, if nobody else does
            current = self.count()
            granted = min(wanted, self.limits.max_count - current)
            if granted <= 0:
                return 0
            condition = "#n = :current" if current else "attribute_not_exists(#n) OR #n = :current"
            if self._try_count(granted, condition, {":current": current}):
                return granted
        return 0

    def _try_count(self, delta: int, condition: str, values: dict[str, int]) -> bool:
        try:
            self._add_count(delta, condition, values)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def _add_count(self, delta: int, condition: str | None = None, values: dict[str, int] | None = None) -> None:
        request: dict[str, Any] = {
            "TableName": self.table, "Key": self._key(keys.LETTER_COUNT_SK),
            "UpdateExpression": "ADD #n :delta", "ExpressionAttributeNames": {"#n": "count"},
            "ExpressionAttributeValues": {":delta": {"N": str(delta)},
                                          **{k: {"N": str(v)} for k, v in (values or {}).items()}},
        }
        if condition:
            request["ConditionExpression"] = condition
        self.client.update_item(**request)

    def _release(self, n: int) -> None:
        if n:
            self._add_count(-n)

    def count(self) -> int:
        item = self.client.get_item(TableName=self.table, Key=self._key(keys.LETTER_COUNT_SK),
                                    ConsistentRead=True).get("Item")
        return int(item["count"]["N"]) if item else 0

    # -- reads, removal ----------------------------------------------------------------------

    def pages(self, page_size: int = PAGE_SIZE, newest_first: bool = False,
              until: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Every letter (up to time ``until``), one Query page at a time."""
        high = keys.letters_until(until) if until else keys.letters_until("~")
        request: dict[str, Any] = {
            "TableName": self.table, "Limit": page_size, "ConsistentRead": True,
            "ScanIndexForward": not newest_first,
            "KeyConditionExpression": "#s = :store AND #l BETWEEN :low AND :high",
            "ExpressionAttributeNames": {"#s": "store", "#l": "letter"},
            "ExpressionAttributeValues": {":store": {"S": self.store}, ":low": {"S": keys.LETTER_PREFIX},
                                          ":high": {"S": high}},
        }
        while True:
            response = self.client.query(**request)
            if response.get("Items"):
                yield [_entry(item) for item in response["Items"]]
            if not response.get("LastEvaluatedKey"):
                return
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def entries(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` letters, newest first."""
        found: list[dict[str, Any]] = []
        if limit <= 0:
            return found
        for page in self.pages(min(limit, PAGE_SIZE), newest_first=True):
            found += page[: limit - len(found)]
            if len(found) >= limit:
                break
        return found

    def remove(self, letter: dict[str, Any]) -> bool:
        """Delete one letter (as ``pages`` gave it); whether it was still there."""
        removed = self._delete(letter)
        self._release(int(removed))
        return removed

    def _delete(self, letter: dict[str, Any]) -> bool:
        # ALL_OLD tells a letter deleted here from one a concurrent replay or purge took: only
        # the first gives its room back, so the counter stays right.
        old = self.client.delete_item(TableName=self.table, Key=self._key(letter["letter"]),
                                      ReturnValues="ALL_OLD").get("Attributes")
        return bool(old)

    def note_replay(self, letter: dict[str, Any], reason: str) -> None:
        """Keep a letter that failed again, with why (its first reason stays)."""
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):  # removed meanwhile
            self.client.update_item(
                TableName=self.table, Key=self._key(letter["letter"]), UpdateExpression="SET replay_reason = :r",
                ConditionExpression="attribute_exists(id)",
                ExpressionAttributeValues={":r": {"S": bound_reason(reason)}},
            )

    def purge(self) -> int:
        """Delete every letter, a page at a time; how many."""
        removed = 0
        for page in self.pages():
            gone = sum(self._delete(letter) for letter in page)
            self._release(gone)
            removed += gone
        self._reconcile_empty()
        return removed

    def _reconcile_empty(self) -> None:
        """Zero a count that an empty store still holds: room a writer reserved and never
        used (killed between reserving and writing). Conditional on the count read, so a
        reservation made meanwhile is not wiped."""
        current = self.count()
        if current and not any(True for _ in self.pages(page_size=1)):
            with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
                self.client.update_item(
                    TableName=self.table, Key=self._key(keys.LETTER_COUNT_SK), UpdateExpression="SET #n = :zero",
                    ConditionExpression="#n = :current", ExpressionAttributeNames={"#n": "count"},
                    ExpressionAttributeValues={":zero": {"N": "0"}, ":current": {"N": str(current)}},
                )

    def _key(self, letter: str) -> dict[str, Any]:
        return {"store": {"S": self.store}, "letter": {"S": letter}}


def _entry(item: dict[str, Any]) -> dict[str, Any]:
    """A stored letter as plain JSON: its payload parsed (still tagged: ``decode_payload``
    gives the original), ``letter`` its key for ``remove``."""
    entry = from_image(item)
    with contextlib.suppress(RecursionError, ValueError):  # else kept as the text it was stored as
        entry["payload"] = json.loads(entry["payload"])
    entry.pop("store", None)
    return entry
