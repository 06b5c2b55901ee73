"""The worker's wiring is explicit: each worker app owns its process's services, its tasks reach
them through ``self``, and a prefork child builds its own instead of sharing its parent's."""

from __future__ import annotations

import os
from types import SimpleNamespace

from feedpipe import tasks
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
