"""The worker's wiring is explicit: each worker app owns its process's services, its tasks reach
them through ``self``, and a prefork child builds its own instead of sharing its parent's."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from feedpipe import services as services_module
from feedpipe import tasks, worker
from feedpipe.config import load_settings
from feedpipe.core.catalog import TASK_QUEUES
from feedpipe.services import Services
from feedpipe.worker import WorkerApp


def test_each_app_owns_its_services_and_its_tasks_reach_them_through_self() -> None:
    one = WorkerApp(load_settings({"FEEDPIPE_GSI_LAG_SECONDS": "1"}))
    two = WorkerApp(load_settings({"FEEDPIPE_GSI_LAG_SECONDS": "7"}))

    for app, lag in ((one, 1.0), (two, 7.0)):
        for name in TASK_QUEUES:
            task = app.tasks[name]
            assert task.app is app and task.services is app.services, name
        assert app.services.settings.gsi_lag_seconds == lag
    assert one.services is not two.services


def test_services_are_built_once_per_process_and_again_in_a_forked_child() -> None:
    app = WorkerApp(load_settings({}))
    parent = app.services
    assert app.services is parent and parent.pid == os.getpid()

    pid = os.fork()  # as a prefork pool starts its children
    if pid == 0:  # the child: only plain objects touched, then out without pytest's teardown
        child = app.services
        os._exit(0 if child is not parent and app.services is child and child.settings is parent.settings else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child built services of its own, once"
    assert app.services is parent


def test_services_given_to_the_app_are_the_ones_its_tasks_use() -> None:
    services = Services(load_settings({}), _stores=SimpleNamespace())  # type: ignore[arg-type]
    app = WorkerApp(services=services)
    assert app.settings is services.settings
    assert app.tasks[tasks.FANOUT_POSTS].services is services


def test_the_worker_runs_on_the_settings_it_resolved_at_start() -> None:
    app = WorkerApp(load_settings({}))
    before = app.services
    resolved = load_settings({"FEEDPIPE_TASK_MAX_RETRIES": "9"})

    app.use_settings(resolved)

    assert app.settings is resolved and app.services is not before
    assert app.services.settings.task_max_retries == 9


def test_no_task_registers_on_apps_made_after_the_worker() -> None:
    """Celery's default (shared tasks) would add every feedpipe task to every later app,
    publishers included."""
    from celery import Celery

    WorkerApp(load_settings({}))
    assert not [name for name in Celery("later").tasks if name.startswith("feedpipe.")]


def _first_build_waits_for_a_second(built: list[str], make: Callable[..., object]) -> Callable[..., object]:
    """A builder whose first call waits until a second call comes in (or a deadline passes: with
    the fix, a second thread is kept out until the first is done)."""
    second_asked = threading.Event()

    def build(*args: object, **kwargs: object) -> object:
        built.append(threading.current_thread().name)
        if len(built) == 1:
            second_asked.wait(timeout=0.5)
        else:
            second_asked.set()
        return make(*args, **kwargs)

    return build


def _at_once(ask: Callable[[], object], threads: int = 2) -> list[object]:
    got: list[object] = []
    started = [threading.Thread(target=lambda: got.append(ask()), name=f"t{n}") for n in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(timeout=10)
    return got


def test_threads_taking_their_first_task_at_once_share_one_set_of_services(monkeypatch) -> None:
    """A thread pool (``--pool threads``) starts its first tasks side by side: the second thread
    asking for services while the first still builds them must get the same ones, not a second
    set of clients and metrics."""
    app = WorkerApp(load_settings({}))
    built: list[str] = []
    monkeypatch.setattr(worker, "Services", _first_build_waits_for_a_second(built, worker.Services))

    got = _at_once(lambda: app.services)

    assert len(built) == 1, built
    assert len(got) == 2 and got[0] is got[1] is app.services


@pytest.mark.parametrize("part, builder", [("dynamodb", "dynamodb_client"), ("redis", "connect_redis"),
                                           ("stores", "build_stores")])
def test_threads_asking_for_a_service_at_once_share_one(monkeypatch, part: str, builder: str) -> None:
    """The same for what the services build in turn: one client of each kind, one set of stores."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # the stores' client is made for real (it connects lazily)
    services = Services(load_settings({}))
    built: list[str] = []
    monkeypatch.setattr(services_module, builder, _first_build_waits_for_a_second(built, lambda *_, **__: object()))

    got = _at_once(lambda: getattr(services, part))

    assert len(built) == 1, built
    assert len(got) == 2 and got[0] is got[1] is getattr(services, part)


def test_a_child_forked_while_the_parent_builds_services_builds_its_own() -> None:
    """The parent's /metrics thread may be building services at the moment of a fork: the
    child must not inherit that held lock and wait on it for ever."""
    app = WorkerApp(load_settings({}))
    with app._building:  # held across the fork, as by another of the parent's threads
        pid = os.fork()
        if pid == 0:
            os._exit(0 if app.services.pid == os.getpid() else 1)
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, "the child got its services"
