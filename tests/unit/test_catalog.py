"""The task catalog is the one place routing is written: every task the worker runs is in it,
every sender (the worker's own hand-offs, the consumer's publisher, beat) routes by it, and
the layers import only what the architecture allows."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from feedpipe.adapters.celery_app import publisher_app
from feedpipe.beat import beat_schedule
from feedpipe.config import load_settings
from feedpipe.core import catalog
from feedpipe.core.events import FollowEnded, FollowStarted, PostPublished, PostRetracted
from feedpipe.worker import WorkerApp

PACKAGE = Path(__file__).resolve().parents[2] / "feedpipe"
SETTINGS = load_settings({"FEEDPIPE_BROKER_URL": "redis://127.0.0.1:1/0"})
worker_app = WorkerApp(SETTINGS)


@pytest.fixture(scope="module")
def registered() -> dict[str, object]:
    return {name: task for name, task in worker_app.tasks.items() if name.startswith("feedpipe.")}


def test_every_task_the_worker_runs_is_in_the_catalog_and_every_catalog_task_runs(registered):
    assert set(registered) == set(catalog.TASK_QUEUES)


def test_no_task_names_its_queue_itself(registered):
    """Celery 6 drops the ``queue`` task attribute: routing is ``task_routes`` alone."""
    assert {name: task.queue for name, task in registered.items() if getattr(task, "queue", None)} == {}


@pytest.mark.parametrize("app", [worker_app, publisher_app(SETTINGS)], ids=["worker", "publisher"])
def test_every_sender_routes_each_task_to_its_catalog_queue(app):
    routed = {name: app.amqp.router.route({}, name)["queue"].name for name in catalog.TASK_QUEUES}
    assert routed == dict(catalog.TASK_QUEUES)
    assert set(routed.values()) == set(catalog.QUEUES)


def test_every_stream_event_goes_to_a_task_that_takes_payloads(registered):
    kinds = {PostPublished.kind, PostRetracted.kind, FollowStarted.kind, FollowEnded.kind}
    assert set(catalog.EVENT_TASKS) == kinds
    for task in catalog.EVENT_TASKS.values():
        assert "payloads" in inspect.signature(registered[task].run).parameters, task  # type: ignore[attr-defined]


def test_beat_schedules_catalog_tasks_and_leaves_their_queue_to_the_routes():
    schedule = beat_schedule(load_settings({"FEEDPIPE_AUDIT_SAMPLE_PER_MINUTE": "5"}))
    assert {entry["task"] for entry in schedule.values()} <= set(catalog.TASK_QUEUES)
    assert all("queue" not in entry["options"] for entry in schedule.values())


# -- layer rules --------------------------------------------------------------------------------

RULES = {
    # layer: feedpipe's own top-level names it must not import (core: anything outside core)
    "core": None,
    "adapters": {"feeds", "tasks", "worker", "consumers", "beat", "ops", "cli", "cli_feeds", "services", "dev"},
    "feeds": {"tasks", "worker", "consumers", "beat", "ops", "cli", "cli_feeds", "services", "dev"},
    "consumers": {"tasks", "worker", "dev"},
    "tasks": {"worker", "cli", "cli_feeds", "dev"},  # a task reaches its app and services through ``self``
}


def _imported(path: Path) -> set[str]:
    """feedpipe's top-level modules or packages ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "feedpipe":
                found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("feedpipe.")}
    return found


@pytest.mark.parametrize("layer", sorted(RULES))
def test_each_layer_imports_only_what_the_layer_rules_allow(layer):
    broken = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        imported = _imported(path)
        banned = imported - {"core"} if RULES[layer] is None else imported & RULES[layer]
        if banned:
            broken[str(path.relative_to(PACKAGE))] = sorted(banned)
    assert broken == {}


def test_the_layer_check_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from feedpipe import tasks\nimport feedpipe.worker\nfrom feedpipe.core import keys\n")
    assert _imported(module) == {"tasks", "worker", "core"}


def test_the_pipeline_imports_no_dev_code_but_the_up_command():
    """``feedpipe.dev`` (embedded backends, the app simulator, the demo) stays out of the
    pipeline's processes: only the CLI's ``up`` command reaches it."""
    users = {str(path.relative_to(PACKAGE)) for path in PACKAGE.glob("*.py") if "dev" in _imported(path)}
    assert users == {"cli.py"}
