"""How a task batch treats failures: permanent ones dead-lettered, transient ones retried with
the rest of the batch, and nothing dropped once retries run out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis
from botocore.exceptions import ClientError

from feedpipe.config import load_settings
from feedpipe.core.events import FollowStarted, to_payload
from feedpipe.runtime import install_runtime
from feedpipe.tasks.base import run_events


class Retry(Exception):
    pass


class FakeTask:
    name = "feedpipe.test"

    def __init__(self, retries: int = 0) -> None:
        self.request = SimpleNamespace(retries=retries)
        self.retried: list[dict[str, Any]] = []

    def retry(self, **kwargs: Any) -> Exception:
        self.retried.append(kwargs)
        return Retry()


class Letters:
    def __init__(self) -> None:
        self.letters: list[tuple[str, str, Any]] = []

    def add(self, source: str, reason: str, payload: Any) -> None:
        self.letters.append((source, reason, payload))

    def add_many(self, letters: list) -> None:
        self.letters.extend(letters)


@pytest.fixture
def letters() -> Letters:
    runtime = install_runtime(load_settings({"FEEDPIPE_TASK_MAX_RETRIES": "3"}))
    sink = Letters()
    runtime._stores = SimpleNamespace(dead_letters=sink)  # type: ignore[assignment]
    return sink


def _follow(n: int) -> dict[str, Any]:
    return to_payload(FollowStarted(f"u{n}", "star"))


def test_a_bad_payload_is_dead_lettered_and_the_batch_goes_on(letters: Letters) -> None:
    done = []
    broken = {"type": "post_published", "post": {"post_id": "x"}}

    run_events(FakeTask(), [_follow(1), broken, _follow(2)], lambda e, _: done.append(e.follower_id))

    assert done == ["u1", "u2"]
    assert [(s, p) for s, _, p in letters.letters] == [("task:feedpipe.test", broken)]
    assert "malformed post_published payload" in letters.letters[0][1]


def test_a_request_dynamodb_rejects_as_invalid_is_permanent(letters: Letters) -> None:
    invalid = ClientError({"Error": {"Code": "ValidationException", "Message": "Item too large"}}, "BatchWriteItem")

    def handle(event: Any, _: Any) -> None:
        raise invalid

    run_events(FakeTask(), [_follow(1)], handle)

    assert "ValidationException" in letters.letters[0][1]


@pytest.mark.parametrize("error", [
    redis.ConnectionError("Connection refused"),
    ClientError(
        {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, "BatchWriteItem"
    ),
])
def test_a_transient_error_retries_the_rest_of_the_batch_with_backoff(letters: Letters, error: Exception) -> None:
    done: list[str] = []
    task = FakeTask(retries=2)

    def handle(event: Any, _: Any) -> None:
        if event.follower_id == "u2":
            raise error
        done.append(event.follower_id)

    with pytest.raises(Retry):
        run_events(task, [_follow(1), _follow(2), _follow(3)], handle)

    assert done == ["u1"]
    (retry,) = task.retried
    assert retry["args"] == [[_follow(2), _follow(3)]]  # the finished event is not redone
    assert 0 <= retry["countdown"] <= 4  # full jitter under the exponential cap for retry 2
    assert letters.letters == []


def test_when_retries_run_out_the_rest_is_dead_lettered_with_the_last_error(letters: Letters) -> None:
    def handle(event: Any, _: Any) -> None:
        raise redis.ConnectionError("still down")

    run_events(FakeTask(retries=3), [_follow(1), _follow(2)], handle)

    assert [p for _, _, p in letters.letters] == [_follow(1), _follow(2)]
    assert all("gave up after 3 retries: ConnectionError: still down" in r for _, r, _ in letters.letters)
