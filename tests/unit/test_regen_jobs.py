"""Regeneration jobs as the app pushes them onto ``feed_regen_queue`` (contract section 3):
parsed into a user to rebuild, or rejected with the reason their dead letter will carry."""

from __future__ import annotations

import json

import pytest

from feedpipe.core.regen import MAX_JOB_BYTES, JobError, RegenJob, coalesce, parse_job

ACTIONS = frozenset({"follow", "unfollow", "rebuild", "regenerate"})


def seed_job(user_id: str = "u_bob", action: str = "follow", **extra: object) -> dict[str, object]:
    """The job the seed's ``followUser`` LPUSHes."""
    job: dict[str, object] = {
        "user_id": user_id,
        "action": action,
        "target_user": "u_alice",
        "timestamp": "2024-01-15T09:00:00.000Z",
    }
    job.update(extra)
    return job


# -- jobs that parse --------------------------------------------------------------------------


@pytest.mark.parametrize("encode", [str, str.encode], ids=["str", "bytes"])
def test_seed_job_parses_from_str_and_bytes(encode):
    text = json.dumps(seed_job())
    job = parse_job(encode(text), ACTIONS)
    assert job == RegenJob(user_id="u_bob", action="follow", raw=text, target_user="u_alice")


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_configured_action_parses(action):
    assert parse_job(json.dumps(seed_job(action=action)), ACTIONS).action == action


def test_unicode_user_id_in_utf8_bytes_parses():
    raw = json.dumps(seed_job(user_id="u_zoë"), ensure_ascii=False).encode("utf-8")
    assert parse_job(raw, ACTIONS).user_id == "u_zoë"


def test_target_user_is_optional_and_only_kept_when_a_string():
    assert parse_job(json.dumps({"user_id": "u1", "action": "rebuild"}), ACTIONS).target_user is None
    assert parse_job(json.dumps(seed_job(target_user=7)), ACTIONS).target_user is None


def test_job_at_the_size_limit_parses():
    body = json.dumps(seed_job(pad=""))
    padded = body.replace('"pad": ""', '"pad": "' + "x" * (MAX_JOB_BYTES - len(body)) + '"')
    assert len(padded.encode()) == MAX_JOB_BYTES
    assert parse_job(padded.encode(), ACTIONS).user_id == "u_bob"


# -- jobs that do not ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json at all", "not JSON"),
        (b"", "not JSON"),
        (b'{"user_id": "u1", "action": "follow"', "not JSON"),
        (b'["u1", "follow"]', "not a JSON object"),
        (b'"u1"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'{"action": "follow", "target_user": "u2"}', "user_id"),
        (b'{"user_id": "", "action": "follow"}', "user_id"),
        (b'{"user_id": null, "action": "follow"}', "user_id"),
        (b'{"user_id": 42, "action": "follow"}', "user_id"),
        (b'{"user_id": ["u1"], "action": "follow"}', "user_id"),
        (b'{"user_id": "u1\\nDEL feed:u2", "action": "follow"}', "control characters"),
        (b'{"user_id": "u1\\u0000", "action": "follow"}', "control characters"),
        (json.dumps(seed_job(user_id="u" * 300)).encode(), "longer than"),
        (b'{"user_id": "u1", "action": "explode"}', "unknown action 'explode'"),
        (b'{"user_id": "u1"}', "unknown action None"),
        (b'{"user_id": "u1", "action": 1}', "unknown action"),
        (b'{"user_id": "caf\xe9", "action": "follow"}', "not UTF-8"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
    ],
    ids=[
        "not-json", "empty", "truncated-json", "array", "string", "null",
        "missing-user", "empty-user", "null-user", "numeric-user", "list-user",
        "newline-in-user", "nul-in-user", "overlong-user",
        "unknown-action", "missing-action", "numeric-action",
        "latin1-bytes", "binary-bytes",
    ],
)
def test_unreadable_job_raises_job_error_with_its_reason(raw, reason):
    with pytest.raises(JobError) as caught:
        parse_job(raw, ACTIONS)
    assert reason in str(caught.value)


def test_user_id_with_newline_as_str_input_is_rejected():
    with pytest.raises(JobError, match="user_id contains control characters"):
        parse_job(json.dumps(seed_job(user_id="u1\nu2")), ACTIONS)


def test_action_not_in_the_configured_set_is_unknown():
    with pytest.raises(JobError, match="unknown action 'rebuild'"):
        parse_job(json.dumps(seed_job(action="rebuild")), frozenset({"follow"}))


def test_overlong_bytes_job_is_rejected_before_parsing():
    raw = json.dumps(seed_job(pad="x" * MAX_JOB_BYTES)).encode()
    with pytest.raises(JobError, match=f"longer than {MAX_JOB_BYTES} bytes"):
        parse_job(raw, ACTIONS)


def test_overlong_str_job_is_rejected_too():
    with pytest.raises(JobError, match="longer than"):
        parse_job(json.dumps(seed_job(pad="x" * MAX_JOB_BYTES)), ACTIONS)


@pytest.mark.parametrize("action", [["follow"], {"follow": True}])
def test_unhashable_action_is_a_job_error(action):
    with pytest.raises(JobError, match="unknown action"):
        parse_job(json.dumps(seed_job(action=action)), ACTIONS)


# -- coalescing ------------------------------------------------------------------------------


def job(user_id: str, action: str = "follow") -> RegenJob:
    return RegenJob(user_id=user_id, action=action, raw=json.dumps(seed_job(user_id, action)))


def test_coalesce_keeps_first_arrival_order_and_deduplicates():
    jobs = [job("u3"), job("u1"), job("u3", "rebuild"), job("u2"), job("u1", "unfollow"), job("u3")]
    assert coalesce(jobs) == ["u3", "u1", "u2"]


def test_coalesce_of_nothing_is_nothing():
    assert coalesce([]) == []
    assert coalesce(iter([])) == []


def test_coalesce_many_duplicates_to_one_per_user():
    jobs = [job(f"u{i % 20:02d}") for i in range(300)]
    assert coalesce(jobs) == [f"u{i:02d}" for i in range(20)]


@pytest.mark.parametrize("depth", [101, 8000])
def test_a_deeply_nested_job_is_refused_with_a_reason(depth: int) -> None:
    """8,000 levels fit in a job's 16 KB and are past what ``json.loads`` can recurse through:
    the RecursionError used to escape the drain, which then took the job back up for ever."""
    raw = '{"user_id": "u1", "action": "follow", "x": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(JobError, match="job nests deeper than 100 levels"):
        parse_job(raw, {"follow"})
