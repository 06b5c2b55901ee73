"""The probes of real processes: consume, worker and beat each answer /healthz and /readyz
with what they are doing; a worker whose broker dies stops being ready, and says why. Flower,
run against a real worker with task events on, reads the worker's tasks back."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from feedpipe.dev.local import LocalRedis, free_port, stop_process
from tests.e2e.harness import pipeline_env, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_broker():
    """A broker this test may kill (the session's is shared)."""
    server = LocalRedis(durable=True).start()
    yield server
    server.stop()


@pytest.fixture
def env(aws_env, redis_urls, own_broker):
    return pipeline_env(aws_env, redis_urls, FEEDPIPE_BROKER_URL=own_broker.broker_url)


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            status, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    except OSError:
        return 0, None
    return status, json.loads(body) if path != "/metrics" and status != 404 else body


def _start(procs, role: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    procs.env = {**procs.env, "FEEDPIPE_METRICS_PORT": str(port)}
    return getattr(procs, role)(), port


def _beats_again(port: int) -> Callable[[], bool]:
    """True once the worker's loop heartbeat is seen to grow, then to be beaten back."""
    seen: list[float] = []

    def check() -> bool:
        seen.append(_get(port, "/healthz")[1]["last_progress_seconds"])
        return max(seen) >= 1 and seen[-1] < max(seen)

    return check


def test_each_process_says_it_is_ready_and_a_worker_without_its_broker_says_why_not(env, world, procs, own_broker):
    world.user("ana")
    started = {role: _start(procs, role) for role in ("consumer", "worker", "beat")}
    ports = {role: port for role, (_, port) in started.items()}

    for role, port in ports.items():
        wait_until(lambda port=port: _get(port, "/readyz")[0] == 200, 90, f"{role} to be ready")
        assert _get(port, "/healthz")[0] == 200, role
        assert "feedpipe_" in _get(port, "/metrics")[1], role
        assert _get(port, "/nothing-here")[0] == 404, role
    assert _get(ports["consumer"], "/readyz")[1] == {
        "ok": True, "reason": "holds 1 leases (fair share 1); rounds progressing", "leases_held": 1, "fair_share": 1,
    }
    assert _get(ports["beat"], "/readyz")[1]["role"] == "leader"
    _, standby = _start(procs, "beat")
    wait_until(lambda: _get(standby, "/readyz")[0] == 200, 60, "a second beat to be ready as a standby")
    assert _get(standby, "/readyz")[1] == {"ok": True, "reason": "waiting for the beat lock as a standby",
                                           "role": "standby"}
    assert _get(ports["worker"], "/readyz")[1] == {"ok": True, "reason": "consuming; broker answers"}
    wait_until(_beats_again(ports["worker"]), 30, "the prefork worker's event loop to beat its heartbeat again")

    own_broker.stop()
    wait_until(lambda: _get(ports["worker"], "/readyz")[0] == 503, 30, "the worker to stop being ready")
    reason = _get(ports["worker"], "/readyz")[1]["reason"]
    assert reason.startswith("broker unreachable:"), reason
    assert _get(ports["worker"], "/healthz")[0] == 200  # a restart would not bring the broker back
    exited = {role: proc.returncode for role, (proc, _) in started.items() if proc.poll() is not None}
    assert "consumer" not in exited, procs.logs()


def test_flower_reads_back_the_tasks_of_a_worker_with_task_events_on(env, world, procs, tmp_path):
    pytest.importorskip("flower", reason="the flower extra is not installed")
    procs.env = {**procs.env, "FEEDPIPE_TASK_EVENTS": "true"}
    procs.worker()
    port = free_port()
    flower_env = {**procs.env, "FLOWER_UNAUTHENTICATED_API": "1"}
    with open(tmp_path / "flower.log", "wb") as log:
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "feedpipe.worker", "flower", f"--port={port}",
             "--address=127.0.0.1"], env=flower_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until(lambda: _get(port, "/api/workers?refresh=1")[0] == 200, 60, "Flower to answer")
        send = "from feedpipe.worker import app; app.send_task('feedpipe.regen.drain', queue='regen')"
        subprocess.run([sys.executable, "-c", send], env=procs.env, check=True, timeout=60)

        def drained() -> bool:
            status, tasks = _get(port, "/api/tasks")
            return status == 200 and any(
                t["name"] == "feedpipe.regen.drain" and t["state"] == "SUCCESS" for t in tasks.values()
            )

        wait_until(drained, 60, "Flower to show the drain task succeeded")
    finally:
        stop_process(flower)
        if flower.returncode not in (0, -15, None):
            print((tmp_path / "flower.log").read_text()[-3000:], file=sys.stderr)
