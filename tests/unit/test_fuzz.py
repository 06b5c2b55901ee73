"""Property-based fuzzing of everything that arrives from outside: stream records, Kinesis
payloads, Lambda events and regeneration jobs, with wrong types, missing keys, huge or
non-UTF-8 content and hostile ids (``#``, ``:``, ``*``, ``{``, newlines).

Properties: nothing crashes (a bad input is a ``RecordError``/``JobError`` with a reason, which
the pipeline dead-letters), every record is accounted for (dispatched, ignored or
dead-lettered), and no id can name another user's keys.

``FEEDPIPE_FUZZ_EXAMPLES`` sets the cases per property (CI: 300; the long mode: 10000). The
cases each property ran (shrinking included) go to the reliability report.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedpipe.consumers.lambda_handler import process_event
from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.core import keys
from feedpipe.core.events import Ignored
from feedpipe.core.records import RecordError, parse_record
from feedpipe.core.regen import JobError, parse_job
from tests.fakes import FakeDeadLetters, FakeDispatcher, brackets, kinesis_record, nested_change
from tests.reliability import report_path, write_report

EXAMPLES = int(os.environ.get("FEEDPIPE_FUZZ_EXAMPLES", "300"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
CASES: Counter[str] = Counter()  # property -> cases run


def counted(test: Callable[..., None]) -> Callable[..., None]:
    """Count every case hypothesis runs through ``test``."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        CASES[test.__name__] += 1
        test(*args, **kwargs)

    return run


@pytest.fixture(scope="module", autouse=True)
def _report_cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    CASES.clear()
    yield
    write_report(report_path(tmp_path_factory.getbasetemp()), {
        "test": "fuzz", "examples_per_property": EXAMPLES, "cases": dict(CASES), "cases_total": CASES.total(),
    })

HOSTILE = st.sampled_from(["#", ":", "*", "{", "}", "\n", "\x00", "FEED#", "USER#", "feed:", "../", " ", "é", "💥"])
ids = st.one_of(st.text(min_size=0, max_size=12), st.lists(HOSTILE, min_size=1, max_size=4).map("".join),
                st.text(min_size=250, max_size=300))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), ids, st.binary(max_size=8))


def attribute_values() -> st.SearchStrategy[Any]:
    """DynamoDB typed values, well formed or not."""
    leaf = st.one_of(
        st.builds(lambda s: {"S": s}, ids),
        st.builds(lambda n: {"N": n}, st.one_of(st.integers().map(str), st.text(max_size=5))),
        st.builds(lambda b: {"BOOL": b}, st.one_of(st.booleans(), scalars)),
        st.just({"NULL": True}),
        st.dictionaries(st.text(max_size=3), scalars, max_size=2),  # unknown or multiple tags
        scalars,
    )
    return st.recursive(leaf, lambda inner: st.one_of(
        st.builds(lambda m: {"M": m}, st.dictionaries(st.text(max_size=6), inner, max_size=3)),
        st.builds(lambda v: {"L": v}, st.lists(inner, max_size=3)),
    ), max_leaves=8)


def images() -> st.SearchStrategy[Any]:
    known = st.sampled_from(["PK", "SK", "post_id", "author_id", "created_at", "content", "is_deleted",
                             "visibility", "engagement_score", "author_username", "content_type"])
    return st.one_of(st.dictionaries(st.one_of(known, st.text(max_size=4)), attribute_values(), max_size=8), scalars)


def key_pairs() -> st.SearchStrategy[Any]:
    pk = st.one_of(ids, st.builds(lambda p, i: p + i, st.sampled_from(["POST#", "USER#", "FEED#"]), ids))
    sk = st.one_of(ids, st.just("METADATA"), st.just("PROFILE"), st.builds(lambda i: "FOLLOWING#" + i, ids))
    return st.builds(lambda p, s: {"PK": {"S": p}, "SK": {"S": s}}, pk, sk)


def records() -> st.SearchStrategy[Any]:
    body = st.fixed_dictionaries({}, optional={
        "Keys": st.one_of(key_pairs(), attribute_values()),
        "NewImage": images(), "OldImage": images(),
        "SequenceNumber": st.one_of(st.integers(0, 10**21).map(str), scalars),
        "ApproximateCreationDateTime": scalars,
    })
    stream = st.fixed_dictionaries({}, optional={
        "eventName": st.one_of(st.sampled_from(["INSERT", "MODIFY", "REMOVE"]), scalars),
        "dynamodb": st.one_of(body, scalars),
        "eventID": scalars,
    })
    kinesis = st.builds(
        lambda data: {"eventSource": "aws:kinesis", "kinesis": {"data": data, "sequenceNumber": "1"}},
        st.one_of(st.binary(max_size=64), stream.map(lambda r: base64.b64encode(json.dumps(r, default=repr).encode())
                                                    .decode()), st.text(max_size=20)),
    )
    return st.one_of(stream, kinesis, scalars, deep_records())


def deep_records() -> st.SearchStrategy[Any]:
    """Nesting from just inside the limit to far past what ``json.loads`` can recurse through:
    as Kinesis data (bytes or base64 text), or as the objects of a record itself."""
    depth = st.one_of(st.integers(90, 110), st.integers(110, 1200), st.integers(1200, 100_000))
    data = st.one_of(depth.map(brackets), st.integers(40, 600).map(nested_change))
    kinesis = st.builds(kinesis_record, st.integers(1, 10**6), data, st.booleans())
    objects = st.builds(_nested_object, st.integers(90, 3000), st.sampled_from(["Keys", "NewImage", "eventID"]))
    return st.one_of(kinesis, objects)


def _nested_object(depth: int, where: str) -> dict[str, Any]:
    value: Any = {"S": "x"}
    for _ in range(depth):
        value = {"M": {"a": value}} if where == "NewImage" else [value]
    body: dict[str, Any] = {"Keys": {"PK": {"S": "POST#p"}, "SK": {"S": "METADATA"}}, "SequenceNumber": "1"}
    if where == "eventID":
        return {"eventName": "INSERT", "eventID": value, "dynamodb": body}
    return {"eventName": "INSERT", "dynamodb": {**body, where: value if where == "Keys" else {"c": value}}}


@fuzz
@given(records())
@counted
def test_a_record_is_an_event_an_ignored_one_or_a_reasoned_error(record: Any) -> None:
    try:
        parsed = parse_record(record)
    except RecordError as exc:
        assert str(exc)  # the reason its dead letter carries
        return
    if not isinstance(parsed, Ignored):
        for user in _ids_of(parsed):
            assert user and len(user) <= 256 and not any(c in user for c in "\x00\n\r")


@fuzz
@given(st.lists(records(), max_size=8))
@counted
def test_every_record_of_a_batch_is_accounted_for(batch: list[Any]) -> None:
    dispatcher, letters = FakeDispatcher(), FakeDeadLetters()
    outcome = RecordPipeline(dispatcher, letters, {"private"}).handle(batch, "stream:fuzz")
    ignored = sum(outcome.ignored.values())
    assert len(dispatcher.events) + ignored + len(letters.letters) == len(batch)
    assert all(reason for _, reason, _ in letters.letters)


@fuzz
@given(st.lists(records(), max_size=6))
@counted
def test_a_lambda_event_never_fails_for_bad_records(batch: list[Any]) -> None:
    """Unreadable records are dead-lettered, never reported as failures (they would block)."""
    dispatcher, letters = FakeDispatcher(), FakeDeadLetters()
    response = process_event({"Records": batch}, RecordPipeline(dispatcher, letters, {"private"}))
    assert response == {"batchItemFailures": []}


jobs = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    st.builds(lambda b: json.dumps(b, default=repr), st.dictionaries(
        st.sampled_from(["user_id", "action", "target_user", "timestamp", "x"]),
        st.one_of(scalars, st.sampled_from(["follow", "unfollow", "rebuild"]), st.lists(scalars, max_size=2)),
        max_size=5)),
    st.binary(min_size=16_385, max_size=16_400),
    st.integers(90, 8192).map(brackets),  # up to the size limit, far past json's recursion
)


@fuzz
@given(jobs)
@counted
def test_a_regen_job_is_read_or_refused_with_a_reason(raw: Any) -> None:
    try:
        job = parse_job(raw, {"follow", "unfollow", "rebuild"})
    except JobError as exc:
        assert str(exc)
        return
    assert job.user_id and "\n" not in job.user_id


@fuzz
@given(ids, ids)
@counted
def test_no_id_can_name_another_users_keys(one: str, other: str) -> None:
    """Key builders are injective and keep their prefix: distinct ids never share a key."""
    for build in (keys.feed_pk, keys.feed_cache, keys.user_pk, keys.followers_cache, keys.following_cache):
        assert build(one).startswith(build(""))
        assert (build(one) == build(other)) == (one == other)
    if one and keys.strip_prefix(keys.feed_pk(one), keys.FEED_PREFIX) is not None:
        assert keys.strip_prefix(keys.feed_pk(one), keys.FEED_PREFIX) == one


def _ids_of(event: Any) -> list[str]:
    post = getattr(event, "post", None)
    if post is not None:
        return [post.post_id, post.author_id]
    return [event.follower_id, event.followed_id]
