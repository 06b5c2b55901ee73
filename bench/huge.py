"""A huge account's post through real workers: time proportional to followers, memory bounded.

A post by an author with a small and a large audience (full run: 25,000 and 100,000 followers;
short: 1,200 and 4,800) is sent as the consumer sends it, one ``feedpipe.fanout.posts`` message,
to a prefork ``feedpipe worker -c 2`` on a moto server and a real Redis broker. The planner task
walks the followers page by page and hands chunks of 1,000 to chunk tasks, which both worker
processes take. Each size gets a fresh worker, and is measured from outside:

- seconds from the message until the worker's ``/metrics`` count every durable item written
  (``feedpipe_feed_items_written_total``), then a scan of the table to prove each follower has
  the post exactly once;
- which worker processes delivered chunks (their pids in the worker's log);
- the largest peak RSS (VmHWM) among the worker's child processes.

Figures: seconds per 1,000 followers at the large size against the small one (a ratio near 1
means time proportional to the audience) and the largest child's peak RSS, large against small
(near 1: memory bounded; a fan-out that held its audience in memory would grow with it).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench._fanout_util import (
    AUTHOR,
    TABLE,
    Backends,
    follower_ids,
    key_only_follow_items,
    put_post,
    warm_subset,
    warm_up,
    write_plain,
)
from bench.figures import Figure
from feedpipe import tasks
from feedpipe.config import load_settings
from feedpipe.core import keys
from feedpipe.core.events import Post, PostPublished, to_payload
from feedpipe.dev.local import LocalBackendError, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1000
WORKER_PROCESSES = 2
WARM_EVERY = 10
FULL = (25_000, 100_000)
SHORT = (1_200, 4_800)
DELIVERY_TIMEOUT_SECONDS = {False: 900, True: 180}  # by short
CHUNK_DONE = re.compile(r"^\S+ \S+ INFO\s+(\d+) celery\.app\.trace: Task feedpipe\.fanout\.chunk\[\S+\] succeeded")
TASK_LINE = re.compile(r"^\S+ \S+ INFO\s+\d+ celery\.\S+: Task \S+\[(\S+)\] (received|succeeded)")
READY = re.compile(r"^\S+ \S+ INFO\s+\d+ celery\.apps\.worker: \S+ ready\.$", re.MULTILINE)


def log(message: str) -> None:
    print(f"   huge: {message}", file=sys.stderr, flush=True)


def run(short: bool = False) -> list[Figure]:
    small, large = SHORT if short else FULL
    with Backends() as backends:
        runs = [measure(backends, n, DELIVERY_TIMEOUT_SECONDS[short]) for n in (small, large)]
    return figures(runs[0], runs[1])


def measure(b: Backends, n: int, timeout: float) -> dict[str, Any]:
    """One fan-out of a post to ``n`` followers by a fresh prefork worker."""
    assert b.redis is not None
    followers = follower_ids(n)
    client = b.empty()
    port = free_port()
    env = _worker_env(b, port)
    with tempfile.TemporaryDirectory(prefix="feedpipe-bench-huge-") as tmp:
        log_path = Path(tmp) / "worker.log"
        worker = _start_worker(env, log_path)  # it boots while the follow edges are written
        try:
            write_plain(client, key_only_follow_items(followers, AUTHOR))
            warm_up(b.redis, warm_subset(followers, WARM_EVERY))
            post = put_post(client, AUTHOR)
            seconds, peaks = _fan_out(worker, log_path, env, port, post, n, timeout)
        finally:
            _kill(worker)
        chunk_pids = _chunk_pids(log_path)
    delivered = _delivered(client, post.post_id)
    log(f"{n:,} followers: {seconds:.1f}s, {delivered:,} delivered, chunk tasks in {len(chunk_pids)} processes, "
        f"child peak RSS {max(peaks, default=0):.1f} MB")
    return {"followers": n, "seconds": round(seconds, 2), "delivered": delivered,
            "seconds_per_1000": round(seconds / n * 1000, 3), "chunk_processes": len(chunk_pids),
            "chunks_per_process": sorted(chunk_pids.values(), reverse=True),
            "child_peak_rss_mb": [round(p, 1) for p in peaks]}


def _start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "feedpipe", "worker", "-c", str(WORKER_PROCESSES), "--without-mingle",
             "--without-gossip", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _fan_out(worker: subprocess.Popen[bytes], log_path: Path, env: dict[str, str], port: int, post: Post, n: int,
             timeout: float) -> tuple[float, list[float]]:
    """Seconds from the post's message until the worker's /metrics count ``n`` durable items, and
    the peak RSS of its children; returns once every task the worker received has finished."""

    def wait(condition: Callable[[], bool], seconds: float, what: str, interval: float = 0.05) -> None:
        try:
            wait_for(lambda: _alive(worker, log_path) and condition(), seconds, what, interval)
        except LocalBackendError as exc:
            raise LocalBackendError(f"{exc} ({_written(port)} written); the worker's log ends:\n"
                                    f"{_tail(log_path)}") from None

    # /metrics only once the pool has forked: its first read builds the main process's services,
    # and a child forked during that build keeps any lock the build held then, held for good
    # (prometheus_client's metric lock, for one): that child's first task hangs.
    wait(lambda: READY.search(log_path.read_text(errors="replace")) is not None, 60, "the worker to be ready")
    wait(lambda: _written(port) is not None, 60, "the worker's /metrics")
    started = time.monotonic()
    _send(env, post)
    wait(lambda: (_written(port) or 0) >= n, timeout, f"{n:,} durable feed items", interval=0.2)
    seconds = time.monotonic() - started
    peaks = _children_peak_rss_mb(worker.pid)
    # The last chunk's settle may still run once every item is written: its task must log.
    wait(lambda: _all_finished(log_path), 60, "every task the worker received to finish")
    return seconds, peaks


def figures(small: dict[str, Any], large: dict[str, Any]) -> list[Figure]:
    setting = (f"prefork worker -c {WORKER_PROCESSES}, chunks of {CHUNK}, moto server; "
               f"{large['followers']:,}: {large['seconds']}s; {small['followers']:,}: {small['seconds']}s")
    complete = large["delivered"] == large["followers"] and small["delivered"] == small["followers"]
    time_ratio = large["seconds_per_1000"] / small["seconds_per_1000"]
    rss_large, rss_small = max(large["child_peak_rss_mb"]), max(small["child_peak_rss_mb"])
    return [
        Figure(
            name=f"huge account: seconds per 1,000 followers, {large['followers']:,}-follower post",
            value=large["seconds_per_1000"], unit="s/1k followers", better="lower",
            baseline_name=f"the same at {small['followers']:,} followers",
            baseline=small["seconds_per_1000"],
            target="time proportional to followers: per-follower time at 4x the audience within 1.5x",
            met=complete and time_ratio <= 1.5 and large["chunk_processes"] == WORKER_PROCESSES,
            notes=f"{setting}; chunk tasks ran in {large['chunk_processes']} worker processes "
                  f"({large['chunks_per_process']} chunks each)",
            extra={"small": small, "large": large},
        ),
        Figure(
            name=f"huge account: worker child peak RSS, {large['followers']:,}-follower post",
            value=rss_large, unit="MB", better="lower",
            baseline_name=f"the same at {small['followers']:,} followers", baseline=rss_small,
            target="bounded: peak RSS at 4x the audience within 1.25x",
            met=complete and rss_large <= 1.25 * rss_small,
            notes="largest VmHWM among the prefork children, imports and clients included",
            extra={"small": small["child_peak_rss_mb"], "large": large["child_peak_rss_mb"]},
        ),
    ]


def _worker_env(b: Backends, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEEDPIPE_", "AWS_"))}
    env.update(b.env)
    env.update({
        "FEEDPIPE_TABLE_NAME": TABLE,
        "FEEDPIPE_BROKER_URL": b.redis_server.broker_url,
        "FEEDPIPE_FANOUT_CHUNK_SIZE": str(CHUNK),
        "FEEDPIPE_FOLLOWER_PAGE_SIZE": "100000",  # moto reads the whole table per Query page
        "FEEDPIPE_METRICS_PORT": str(port),
        "FEEDPIPE_LOG_LEVEL": "INFO",
    })
    return env


def _send(env: dict[str, str], post: Post) -> None:
    """The message the consumer would publish for the post's INSERT record, from a publisher
    of its own (this process's other benchmarks used other brokers)."""
    from feedpipe.adapters.celery_app import publisher_app

    app = publisher_app(load_settings({k: v for k, v in env.items() if k.startswith("FEEDPIPE_")}))
    with app.connection_for_write() as connection:
        app.send_task(tasks.FANOUT_POSTS, args=[[to_payload(PostPublished(post))]], connection=connection)


def _all_finished(log_path: Path) -> bool:
    """Every task the worker's log shows received has succeeded (a retried task is received
    again under its id, so it counts once)."""
    received: set[str] = set()
    succeeded: set[str] = set()
    for line in log_path.read_text(errors="replace").splitlines():
        match = TASK_LINE.match(line)
        if match:
            (received if match.group(2) == "received" else succeeded).add(match.group(1))
    return received <= succeeded


def _kill(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the worker's process group: its tasks are done (or the run failed), and a warm
    shutdown of a prefork pool takes 2-3 s however idle."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)


def _alive(worker: subprocess.Popen[bytes], log_path: Path) -> bool:
    """True while the worker runs; a worker that exited fails the benchmark at once, with its log."""
    if worker.poll() is not None:
        raise LocalBackendError(f"the worker exited with {worker.returncode}; its log ends:\n{_tail(log_path)}")
    return True


def _tail(log_path: Path, lines: int = 40) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _written(port: int) -> float | None:
    """Durable feed items the worker has written, per its /metrics; None until it answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "feedpipe_feed_items_written_total" and sample.labels.get("store") == "dynamodb":
                total += sample.value
    return total


def _children_peak_rss_mb(pid: int) -> list[float]:
    peaks = []
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
    return peaks


def _chunk_pids(log_path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = CHUNK_DONE.match(line)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def _delivered(client: Any, post_id: str) -> int:
    """Durable feeds holding ``post_id`` (a full scan: once per size, after the clock stops)."""
    request: dict[str, Any] = {
        "TableName": TABLE, "Select": "COUNT",
        "FilterExpression": "begins_with(PK, :f) AND post_id = :p",
        "ExpressionAttributeValues": {":f": {"S": keys.FEED_PREFIX}, ":p": {"S": post_id}},
    }
    total = 0
    while True:
        page = client.scan(**request)
        total += page["Count"]
        if "LastEvaluatedKey" not in page:
            return total
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

