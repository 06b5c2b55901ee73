"""A worker process's peak memory during a fan-out, measured apart from the model it runs on.

``bench.million`` runs the whole fleet and the model in one process, so its RSS says nothing
about a worker. Here, two measurements, each of a worker's own part:
- per task: tracemalloc's peak over one planner task (walking every follower alone, page by page,
  its last chunk delivered inline) and over one chunk task, each run alone against the model
  (``bench._worker_util``). Each is run twice and the second run traced: the model then stores
  nothing new (the same items are overwritten). The model's work on each call is left out of
  the peak; its decoding of a request and its encoding of an answer (a few hundred KB at most,
  a real client's response bytes) are counted against the worker: a slight overstatement.
- per process: the RSS of a fresh process that imported the worker (``feedpipe.worker``) and
  built its services (boto3 client, Redis client, metrics), as a worker child holds before its
  first task.
Projected: base RSS + task slots x the larger task peak (a prefork child runs one task at a time;
a process of ``slots`` threads, as the model's, that many). Beside it, the design bound's bytes:
one follower page as read (the largest Query response) and one chunk as written (its
BatchWriteItem requests), as they go over the wire.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._worker_util import CHUNK, TaskWorld
from bench.figures import Figure

MB = 2**20
ROOT = Path(__file__).resolve().parents[1]
_BASE_RSS = """
import sys
import feedpipe.worker
from bench._util import rss_bytes, set_local_aws_env
from feedpipe.config import load_settings
set_local_aws_env()
settings = load_settings({"FEEDPIPE_TABLE_NAME": "SocialMediaApp", "FEEDPIPE_REDIS_URL": sys.argv[1]})
app = feedpipe.worker.WorkerApp(settings)
app.services.stores
print(rss_bytes())
"""


def traced_peak(world: TaskWorld, fn: Callable[[], object]) -> tuple[int, int]:
    """Bytes ``fn`` held at its peak, and still held after it, above what was held before; the
    model's own work on a call (between receiving the request and answering) is left out: the
    worker's memory does not change meanwhile, and the peak is taken on either side of it."""
    outside = 0
    handle = world.model.handle

    def untraced(operation: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        nonlocal outside
        outside = max(outside, tracemalloc.get_traced_memory()[1])
        try:
            return handle(operation, params)
        finally:
            tracemalloc.reset_peak()

    world.model.handle = untraced  # type: ignore[method-assign]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fn()
        after, peak = tracemalloc.get_traced_memory()
        return max(outside, peak) - before, after - before
    finally:
        tracemalloc.stop()
        del world.model.handle


def wire_bytes(world: TaskWorld, fn: Callable[[], object]) -> Counter[str]:
    """The largest Query response and the total BatchWriteItem request bytes of ``fn``'s calls."""
    sizes: Counter[str] = Counter()
    handle = world.model.handle

    def measured(operation: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, body = handle(operation, params)
        if operation == "Query":
            sizes["page"] = max(sizes["page"], len(json.dumps(body)))
        if operation == "BatchWriteItem":
            sizes["chunk"] += len(json.dumps(params))
        return status, body

    world.model.handle = measured  # type: ignore[method-assign]
    try:
        fn()
    finally:
        del world.model.handle
    return sizes


def base_rss(redis_url: str) -> subprocess.Popen[str]:
    """A fresh process holding an idle worker's imports and services: it prints its RSS."""
    return subprocess.Popen([sys.executable, "-c", _BASE_RSS, redis_url], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def measure(world: TaskWorld, redis_url: str) -> dict[str, Any]:
    """``world``'s planner (walking every follower) and its first chunk, each alone."""
    base = base_rss(redis_url)
    try:
        sizes = wire_bytes(world, world.plan) + wire_bytes(world, world.deliver)
        planner, planner_left = traced_peak(world, world.plan)
        chunk, chunk_left = traced_peak(world, world.deliver)
        rss = int(base.communicate(timeout=120)[0].split()[-1])
    finally:
        base.kill()
    return {"followers": len(world.followers), "planner_peak": planner, "planner_left": planner_left,
            "chunk_peak": chunk, "chunk_left": chunk_left, "page_bytes": sizes["page"], "chunk_bytes": sizes["chunk"],
            "base_rss": rss}


def memory_figures(name: str, r: dict[str, Any], slots: int) -> list[Figure]:
    task = max(r["planner_peak"], r["chunk_peak"])
    projected = r["base_rss"] + slots * task
    bound = r["page_bytes"] + r["chunk_bytes"]
    tasks = (f"tracemalloc, each task alone against the model: a planner walking {r['followers']:,} followers "
             f"{r['planner_peak'] / MB:.2f} MB, a chunk of {CHUNK} {r['chunk_peak'] / MB:.2f} MB (held after: "
             f"{r['planner_left'] / MB:.2f} / {r['chunk_left'] / MB:.2f} MB); a page {r['page_bytes'] / MB:.2f} MB "
             f"and a chunk {r['chunk_bytes'] / MB:.2f} MB on the wire")
    return [
        Figure(f"{name}, a fan-out task's peak memory (vs a page and a chunk)", round(task / MB, 2), "MB",
               "one follower page + one chunk, as bytes on the wire", round(bound / MB, 2), better="lower",
               target="bounded by a page and a chunk, whatever the audience", met=None, notes=tasks, extra=r),
        Figure(f"{name}, a worker process's peak memory, projected (vs an idle worker)", round(projected / MB, 1),
               "MB", "an idle worker process: imported, services built", round(r["base_rss"] / MB, 1),
               better="lower", target="<= 200 MB a worker process (the bound of the earlier memory figures)",
               met=projected <= 200 * MB,
               notes=f"projected: base RSS (measured: a fresh process) + {slots} task slots x the larger task "
                     f"peak (measured); a prefork child runs one task at a time: "
                     f"{(r['base_rss'] + task) / MB:.1f} MB"),
    ]


def run(world: TaskWorld, redis_url: str, slots: int) -> list[Figure]:
    r = measure(world, redis_url)
    return memory_figures(f"million model: {r['followers']:,}-follower walk", r, slots)
