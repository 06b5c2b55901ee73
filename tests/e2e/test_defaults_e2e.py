"""The README's production commands, started together on one host with no metrics settings:
each kind of process serves ``/metrics`` on its own default port, and together they deliver."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from feedpipe.config import DEFAULT_METRICS_PORTS
from tests.e2e.harness import pipeline_env, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(aws_env, redis_urls):
    env = pipeline_env(aws_env, redis_urls)
    del env["FEEDPIPE_METRICS_PORT"]
    env.pop("FEEDPIPE_METRICS_ADDR", None)
    return env


def _taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def test_consume_worker_and_beat_run_side_by_side_with_default_settings(env, world, procs) -> None:
    busy = [port for port in DEFAULT_METRICS_PORTS.values() if _taken(port)]
    if busy:
        pytest.skip(f"default metrics ports {busy} are taken on this host by something else")
    world.user("ana", "ben")
    world.bulk_follow(["ben"], "ana")

    started = {"consume": procs.consumer(), "worker": procs.worker(), "beat": procs.beat()}
    world.post("ana", "p1")

    for role, port in DEFAULT_METRICS_PORTS.items():
        wait_until(lambda port=port: "feedpipe_" in _metrics(port), 60, f"{role} to serve /metrics on {port}")
    assert "feedpipe_queue_depth" in _metrics(DEFAULT_METRICS_PORTS["worker"])
    assert "feedpipe_leases_held" in _metrics(DEFAULT_METRICS_PORTS["consume"])
    wait_until(world.settled, 120, "the post to reach ben's feed")
    assert world.durable_feeds()["ben"] == {"p1"}
    exited = {role: proc.returncode for role, proc in started.items() if proc.poll() is not None}
    assert not exited, f"{exited}\n{procs.logs()}"
