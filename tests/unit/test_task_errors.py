"""How a task batch treats failures: permanent ones dead-lettered, transient ones retried with
the rest of the batch, and nothing dropped once retries run out."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from botocore.exceptions import ClientError

from feedpipe import tasks
from feedpipe.config import load_settings
from feedpipe.core.events import FollowStarted, to_payload
from feedpipe.services import Services
from feedpipe.tasks.base import run_events
from feedpipe.worker import WorkerApp


class Retry(Exception):
    pass


class FakeTask:
    name = "feedpipe.test"

    def __init__(self, services: Services, retries: int = 0) -> None:
        self.services = services
        self.request = SimpleNamespace(retries=retries)
        self.retried: list[dict[str, Any]] = []
        self.handed_on: list[dict[str, Any]] = []

    def retry(self, **kwargs: Any) -> Exception:
        self.retried.append(kwargs)
        return Retry()

    def apply_async(self, **kwargs: Any) -> None:
        self.handed_on.append(kwargs)


class Letters:
    def __init__(self) -> None:
        self.letters: list[tuple[str, str, Any]] = []

    def add(self, source: str, reason: str, payload: Any) -> None:
        self.letters.append((source, reason, payload))

    def add_many(self, letters: list) -> None:
        self.letters.extend(letters)


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoffs a requeue waits out, recorded instead of slept."""
    import feedpipe.tasks.base as base

    waited: list[float] = []
    monkeypatch.setattr(base, "time", SimpleNamespace(monotonic=time.monotonic, sleep=waited.append))
    return waited


@pytest.fixture
def letters() -> Letters:
    return Letters()


def _services(letters: Letters, env: dict[str, str], **stores: Any) -> Services:
    """Services on ``env``'s settings whose only store is ``letters`` (and ``stores``)."""
    return Services(load_settings(env), _stores=SimpleNamespace(dead_letters=letters, **stores))  # type: ignore[arg-type]


@pytest.fixture
def services(letters: Letters) -> Services:
    return _services(letters, {"FEEDPIPE_TASK_MAX_RETRIES": "3"})


def _follow(n: int) -> dict[str, Any]:
    return to_payload(FollowStarted(f"u{n}", "star"))


def test_a_bad_payload_is_dead_lettered_and_the_batch_goes_on(letters: Letters, services: Services) -> None:
    done = []
    broken = {"type": "post_published", "post": {"post_id": "x"}}

    run_events(FakeTask(services), [_follow(1), broken, _follow(2)], lambda e, _: done.append(e.follower_id))

    assert done == ["u1", "u2"]
    assert [(s, p) for s, _, p in letters.letters] == [("task:feedpipe.test", broken)]
    assert "malformed post_published payload" in letters.letters[0][1]


def test_a_request_dynamodb_rejects_as_invalid_is_permanent(letters: Letters, services: Services) -> None:
    invalid = ClientError({"Error": {"Code": "ValidationException", "Message": "Item too large"}}, "BatchWriteItem")

    def handle(event: Any, _: Any) -> None:
        raise invalid

    run_events(FakeTask(services), [_follow(1)], handle)

    assert "ValidationException" in letters.letters[0][1]


@pytest.mark.parametrize("error", [
    redis.ConnectionError("Connection refused"),
    ClientError(
        {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, "BatchWriteItem"
    ),
])
def test_a_transient_error_retries_the_rest_of_the_batch_with_backoff(
    letters: Letters, services: Services, error: Exception
) -> None:
    done: list[str] = []
    task = FakeTask(services, retries=2)

    def handle(event: Any, _: Any) -> None:
        if event.follower_id == "u2":
            raise error
        done.append(event.follower_id)

    with pytest.raises(Retry):
        run_events(task, [_follow(1), _follow(2), _follow(3)], handle)

    assert done == ["u1"]
    (retry,) = task.retried
    # The finished event is not redone; the one that failed is marked as started on, the rest not.
    assert retry["args"] == [[{**_follow(2), "attempted": True}, _follow(3)]]
    assert 0 <= retry["countdown"] <= 4  # full jitter under the exponential cap for retry 2
    assert letters.letters == []


def test_when_retries_run_out_the_rest_is_dead_lettered_with_the_last_error(
    letters: Letters, services: Services
) -> None:
    def handle(event: Any, _: Any) -> None:
        raise redis.ConnectionError("still down")

    run_events(FakeTask(services, retries=3), [_follow(1), _follow(2)], handle)

    assert [p for _, _, p in letters.letters] == [{**_follow(1), "attempted": True}, _follow(2)]
    assert all("gave up after 3 retries: ConnectionError: still down" in r for _, r, _ in letters.letters)


@pytest.mark.parametrize("payload", [{"user_id": 5}, {"user_id": ""}, "u1", {"user_id": "u1", "durable": "yes"}])
def test_a_rebuild_payload_that_cannot_be_read_is_dead_lettered(
    letters: Letters, services: Services, payload: Any
) -> None:
    rebuild_feeds = WorkerApp(services=services).tasks[tasks.REGEN_REBUILD]

    rebuild_feeds.apply(args=[[payload]])

    assert [(s, p) for s, _, p in letters.letters] == [("task:feedpipe.regen.rebuild", payload)]
    assert "rebuild payload" in letters.letters[0][1]


def test_a_batch_that_outlasts_a_quarter_of_the_visibility_timeout_hands_its_rest_on(
    letters: Letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Visibility timeout 20 s (set up by ``letters``: the default is 600): after 5 s the rest
    goes on in a fresh message, so no copy of this one is redelivered while it still runs."""
    import feedpipe.tasks.base as base

    services = _services(letters, {"FEEDPIPE_TASK_VISIBILITY_TIMEOUT_SECONDS": "20"})
    clock = [1000.0]
    monkeypatch.setattr(base, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    done: list[str] = []

    def slow(event: Any, _: Any) -> None:
        done.append(event.follower_id)
        clock[0] += 2.0  # a big fan-out each

    task = FakeTask(services)
    run_events(task, [_follow(n) for n in range(6)], slow)

    assert done == ["u0", "u1", "u2"]  # 6 s > 5 s once the third is done
    assert task.handed_on == [{"args": [[_follow(n) for n in range(3, 6)]]}]
    assert task.retried == [] and letters.letters == []


@pytest.mark.parametrize("resume", ["page 2", {"start": {}, "walked": 3}, {"start": {"PK": "x"}, "walked": 1},
                                    {"start": {"PK": {"S": "USER#a"}}, "walked": -1}])
def test_a_fan_out_resume_that_cannot_be_read_is_dead_lettered(
    letters: Letters, services: Services, resume: Any
) -> None:
    from feedpipe.core.events import PostPublished
    from tests.unit.conftest import make_post

    fan_out_posts = WorkerApp(services=services).tasks[tasks.FANOUT_POSTS]
    payload = {**to_payload(PostPublished(make_post("p1"))), "resume": resume}
    fan_out_posts.apply(args=[[payload]])

    assert [(s, p) for s, _, p in letters.letters] == [("task:feedpipe.fanout.posts", payload)]
    assert "resume needs a start key" in letters.letters[0][1]


def test_transient_failures_are_retried_up_to_our_limit_not_celerys_default_of_three(
    letters: Letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real task, run eagerly: five failures then success, with FEEDPIPE_TASK_MAX_RETRIES=8.
    Celery's own default (3 retries, then fail and acknowledge) would drop the user silently."""
    import feedpipe.tasks.regen as regen_tasks
    from feedpipe.metrics import noop_metrics

    app = WorkerApp(services=_services(letters, {"FEEDPIPE_TASK_MAX_RETRIES": "8"}, metrics=noop_metrics()))
    monkeypatch.setattr("feedpipe.tasks.base.full_jitter", lambda *a, **k: 0)
    calls: list[str] = []

    def flaky(stores: Any, user_id: str, durable: bool, *_: Any) -> None:
        calls.append(user_id)
        if len(calls) <= 5:
            raise redis.ConnectionError("Redis restarting")

    monkeypatch.setattr(regen_tasks, "rebuild_user", flaky)
    result = app.tasks[tasks.REGEN_REBUILD].apply(args=[[{"user_id": "u1", "durable": False}]])

    assert result.successful(), result.traceback
    assert calls == ["u1"] * 6 and letters.letters == []


def test_a_retry_the_broker_cannot_take_puts_the_message_back_instead_of_dropping_it(
    letters: Letters, services: Services
) -> None:
    from celery.exceptions import Reject

    class BrokerDown(FakeTask):
        def retry(self, **kwargs: Any) -> Exception:
            raise Reject(ConnectionError("broker unreachable"), requeue=False)  # as Celery does

    def handle(event: Any, _: Any) -> None:
        raise redis.ConnectionError("Redis down")

    with pytest.raises(Reject) as rejected:
        run_events(BrokerDown(services), [_follow(1)], handle)

    assert rejected.value.requeue is True
    assert letters.letters == []


def test_a_batch_that_cannot_hand_its_rest_on_puts_the_message_back(letters: Letters, monkeypatch) -> None:
    from celery.exceptions import Reject

    import feedpipe.tasks.base as base

    services = _services(letters, {"FEEDPIPE_TASK_VISIBILITY_TIMEOUT_SECONDS": "4"})
    clock = [0.0]
    monkeypatch.setattr(base, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=lambda _: None))

    class BrokerDown(FakeTask):
        def apply_async(self, **kwargs: Any) -> None:
            raise ConnectionError("broker unreachable")

    def slow(event: Any, _: Any) -> None:
        clock[0] += 2.0

    with pytest.raises(Reject) as rejected:
        run_events(BrokerDown(services), [_follow(1), _follow(2)], slow)
    assert rejected.value.requeue is True


def test_a_dead_letter_that_cannot_be_written_puts_the_message_back(letters: Letters, services: Services) -> None:
    from celery.exceptions import Reject

    def broken_store(*_: Any) -> None:
        raise redis.ConnectionError("Redis down")

    letters.add = broken_store  # type: ignore[method-assign]
    with pytest.raises(Reject) as rejected:
        run_events(FakeTask(services), [{"type": "nonsense"}], lambda e, _: None)
    assert rejected.value.requeue is True


@pytest.mark.parametrize(("visibility", "longest"), [("8", 2), ("60", 15), ("600", 120)])
def test_a_retry_countdown_never_outlives_a_quarter_of_the_visibility_timeout(
    letters: Letters, monkeypatch: pytest.MonkeyPatch, visibility: str, longest: int
) -> None:
    """A countdown retry sits unacknowledged in a Redis worker: one longer than the visibility
    timeout (up to 120 s, against 5 s) was delivered again while it waited, and ran 4 times."""
    import random

    services = _services(letters, {"FEEDPIPE_TASK_VISIBILITY_TIMEOUT_SECONDS": visibility})
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the jitter's longest draw

    def down(event: Any, _: Any) -> None:
        raise redis.ConnectionError("Redis down")

    countdowns = []
    for retries in range(12):
        task = FakeTask(services, retries=retries)
        with pytest.raises(Retry):
            run_events(task, [_follow(1)], down)
        countdowns.append(task.retried[0]["countdown"])

    assert max(countdowns) == longest
    assert countdowns[0] == 1  # the first retry still waits its second


@pytest.mark.parametrize("draw", [0.3, 0.7, 1.4, 5.5])
def test_a_retry_countdown_is_whole_seconds_for_rabbitmqs_delayed_delivery(
    letters: Letters, monkeypatch: pytest.MonkeyPatch, draw: float
) -> None:
    """Regression: a jittered countdown of 0.3 s reached Celery's native delayed delivery as
    int(0.3) == 0, which kombu refuses ("countdown must be a positive number"): the retry was
    rejected and requeued at once, with no backoff and its retry count unchanged."""
    import random

    services = _services(letters, {})
    monkeypatch.setattr(random, "uniform", lambda low, high: min(draw, high))

    def down(event: Any, _: Any) -> None:
        raise redis.ConnectionError("Redis down")

    task = FakeTask(services, retries=3)
    with pytest.raises(Retry):
        run_events(task, [_follow(1)], down)
    countdown = task.retried[0]["countdown"]
    assert isinstance(countdown, int) and countdown == round(draw)


def test_a_message_whose_dead_letter_cannot_be_written_backs_off_before_it_comes_back(
    letters: Letters, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    """It used to be put back at once, and taken again at once: a tight loop against a store
    that is down. Each requeue in a row now waits twice as long (capped at the task budget)."""
    import random

    from celery.exceptions import Reject

    services = _services(letters, {"FEEDPIPE_TASK_VISIBILITY_TIMEOUT_SECONDS": "40"})
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the jitter's longest draw
    store_down = [True]

    def add(*letter: Any) -> None:
        if store_down[0]:
            raise redis.ConnectionError("Redis down")
        letters.letters.append(letter)  # type: ignore[arg-type]

    letters.add = add  # type: ignore[method-assign]
    for _ in range(6):
        with pytest.raises(Reject):
            run_events(FakeTask(services), [{"type": "nonsense"}], lambda e, _: None)
    assert sleeps == [1, 2, 4, 8, 10, 10]  # capped at the budget: a quarter of 40 s

    store_down[0] = False
    run_events(FakeTask(services), [{"type": "nonsense"}], lambda e, _: None)
    store_down[0] = True
    with pytest.raises(Reject):
        run_events(FakeTask(services), [{"type": "nonsense"}], lambda e, _: None)
    assert sleeps[-1] == 1  # a write that worked ends the streak
    assert len(letters.letters) == 1


def test_the_backoff_is_full_jitter(letters: Letters, services: Services, sleeps: list[float]) -> None:
    from celery.exceptions import Reject

    def broken_store(*_: Any) -> None:
        raise redis.ConnectionError("Redis down")

    letters.add = broken_store  # type: ignore[method-assign]
    for _ in range(60):
        with pytest.raises(Reject):
            run_events(FakeTask(services), [{"type": "nonsense"}], lambda e, _: None)
    assert all(0 <= wait <= 120 for wait in sleeps) and len(set(sleeps[10:])) > 5


def test_a_durable_rebuild_handed_on_goes_on_in_a_fresh_rebuild_message(
    letters: Letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message a rebuild over budget sends is one the rebuild task reads back, resuming
    where it stopped."""
    import feedpipe.tasks.regen as regen_tasks
    from feedpipe.feeds.rebuild import RebuildResume
    from feedpipe.metrics import noop_metrics

    app = WorkerApp(services=_services(letters, {}, metrics=noop_metrics()))
    rebuild_feeds = app.tasks[tasks.REGEN_REBUILD]
    seen: list[RebuildResume | None] = []
    sent: list[dict[str, Any]] = []

    def rebuild(stores: Any, user_id: str, durable: bool, resume: Any, hand_on: Any) -> bool:
        seen.append(resume)
        if resume is None:
            hand_on(RebuildResume(1, "carol"))
            return False
        return True

    monkeypatch.setattr(regen_tasks, "rebuild_user", rebuild)
    router = app.amqp.router
    monkeypatch.setattr(app, "send_task", lambda name, args, **options: sent.append(
        {"name": name, "args": args, "queue": router.route(options, name)["queue"].name}))

    rebuild_feeds.apply(args=[[{"user_id": "bob", "durable": True}]])
    [message] = sent
    assert (message["name"], message["queue"]) == ("feedpipe.regen.rebuild", "regen")
    rebuild_feeds.apply(args=message["args"])

    assert seen == [None, RebuildResume(1, "carol")] and letters.letters == []


@pytest.mark.parametrize("resume", ["step 1", {"step": 3, "after": "a"}, {"step": True, "after": "a"},
                                    {"step": 1, "after": 7}])
def test_a_rebuild_resume_that_cannot_be_read_is_dead_lettered(
    letters: Letters, services: Services, resume: Any
) -> None:
    rebuild_feeds = WorkerApp(services=services).tasks[tasks.REGEN_REBUILD]
    payload = {"user_id": "bob", "durable": True, "resume": resume}
    rebuild_feeds.apply(args=[[payload]])

    assert [(s, p) for s, _, p in letters.letters] == [("task:feedpipe.regen.rebuild", payload)]
    assert "resume needs a step" in letters.letters[0][1]


def test_a_fan_out_walk_split_in_two_goes_on_in_a_planner_message_and_its_chunks_in_their_own_queue(
    letters: Letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The messages a splitting planner sends are ones the planner task reads back: the upper
    segment to the planners' queue, chunks to the chunks' queue."""
    import feedpipe.tasks.fanout as fanout_tasks
    from feedpipe.core.events import PostPublished
    from feedpipe.core.follower_segments import Segment
    from feedpipe.metrics import noop_metrics
    from tests.unit.conftest import make_post

    app = WorkerApp(services=_services(letters, {}, metrics=noop_metrics()))
    seen: list[Segment | None] = []
    sent: list[dict[str, Any]] = []

    def walk(stores: Any, post: Any, hand_out: Any, resume: Any, hand_on: Any, segment: Any, split: Any,
             sweep: Any) -> int:
        seen.append(segment)
        if segment is None:
            split(Segment("m", None, 8))
            hand_out(["f1", "f2"])
        return 0

    monkeypatch.setattr(fanout_tasks.fanout, "fan_out_post", walk)
    router = app.amqp.router
    monkeypatch.setattr(app, "send_task", lambda name, args, **options: sent.append(
        {"name": name, "args": args, "queue": router.route(options, name)["queue"].name}))

    app.tasks[tasks.FANOUT_POSTS].apply(args=[[to_payload(PostPublished(make_post("p1")))]])
    split_message, chunk_message = sent
    assert (split_message["name"], split_message["queue"]) == ("feedpipe.fanout.posts", "fanout")
    assert (chunk_message["name"], chunk_message["queue"]) == ("feedpipe.fanout.chunk", "fanout_chunks")
    app.tasks[tasks.FANOUT_POSTS].apply(args=split_message["args"])

    assert seen == [None, Segment("m", None, 8)] and letters.letters == []


def _run_planner(app: WorkerApp, payload: dict[str, Any], **request: Any) -> None:
    """Run the fan-out planner on ``payload`` as a worker does, with the request Celery builds
    from the message (its ``retries``, its ``delivery_info``)."""
    planner = app.tasks[tasks.FANOUT_POSTS]
    planner.push_request(**request)
    try:
        planner.run([payload])
    finally:
        planner.pop_request()


@pytest.mark.parametrize("request_", [{}, {"retries": 0, "delivery_info": {"redelivered": False}}, {"retries": 1}],
                         ids=["eager", "first-delivery", "retried-but-this-payload-never-ran"])
def test_a_fan_out_planner_on_its_first_attempt_has_nothing_to_sweep(
    letters: Letters, monkeypatch: pytest.MonkeyPatch, request_: dict[str, Any]
) -> None:
    import feedpipe.tasks.fanout as fanout_tasks
    from feedpipe.core.events import PostPublished
    from feedpipe.metrics import noop_metrics
    from tests.unit.conftest import make_post

    app = WorkerApp(services=_services(letters, {}, metrics=noop_metrics()))
    given: list[Any] = []
    monkeypatch.setattr(fanout_tasks.fanout, "fan_out_post", lambda *args: given.append(args[-1]))

    _run_planner(app, to_payload(PostPublished(make_post("p1"))), **request_)

    assert given == [None]


@pytest.mark.parametrize(("request_", "marked"), [({"retries": 1}, True),
                                                  ({"retries": 0, "delivery_info": {"redelivered": True}}, False)],
                         ids=["retried", "redelivered"])
def test_a_fan_out_planner_that_ran_before_sweeps_through_the_retraction_tasks(
    letters: Letters, monkeypatch: pytest.MonkeyPatch, request_: dict[str, Any], marked: bool
) -> None:
    """A second attempt (a payload a retry marked as started on, or a message the broker
    delivered again) is given a retraction's hand-offs: its chunks go to the retraction chunk
    task, its splits and hand-ons to the retraction planner, as post_retracted events those
    tasks read back."""
    import feedpipe.tasks.fanout as fanout_tasks
    from feedpipe.core.events import PostPublished
    from feedpipe.core.follower_segments import Segment
    from feedpipe.core.messages import Resume
    from feedpipe.metrics import noop_metrics
    from tests.unit.conftest import make_post

    app = WorkerApp(services=_services(letters, {}, metrics=noop_metrics()))
    sent: list[dict[str, Any]] = []
    retracted: list[tuple[str, Any]] = []

    def walk(stores: Any, post: Any, hand_out: Any, resume: Any, hand_on: Any, segment: Any, split: Any,
             sweep: Any) -> int:
        sweep.hand_out(["f1", "f2"])
        sweep.split(Segment("m", None, 2))
        sweep.hand_on(Resume({"PK": {"S": "USER#u_alice"}}, 7))
        return 0

    monkeypatch.setattr(fanout_tasks.fanout, "fan_out_post", walk)
    monkeypatch.setattr(fanout_tasks.fanout, "retract_chunk", lambda _s, post, followers: retracted.append(
        (post.post_id, followers)))
    monkeypatch.setattr(fanout_tasks.fanout, "retract_post", lambda _s, post, _o, resume, _on, segment, _sp: (
        retracted.append((post.post_id, resume or segment))))
    router = app.amqp.router
    monkeypatch.setattr(app, "send_task", lambda name, args, **options: sent.append(
        {"name": name, "args": args, "queue": router.route(options, name)["queue"].name}))

    payload = to_payload(PostPublished(make_post("p1")))
    _run_planner(app, {**payload, "attempted": True} if marked else payload, **request_)
    assert [(m["name"], m["queue"]) for m in sent] == [("feedpipe.retract.chunk", "retract")] + [
        ("feedpipe.retract.posts", "retract")] * 2
    for message in sent:
        assert message["args"][0][0]["type"] == "post_retracted"
        app.tasks[message["name"]].apply(args=message["args"])

    assert retracted == [("p1", ["f1", "f2"]), ("p1", Segment("m", None, 2)),
                         ("p1", Resume({"PK": {"S": "USER#u_alice"}}, 7))] and letters.letters == []
