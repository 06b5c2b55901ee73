"""Fan-out throughput per worker process at 1, 2 and 4 real processes, and the fleet a write
budget needs, projected from them.

Measured, in real OS processes (forked, all at once): each runs chunk tasks (``deliver_chunk``,
chunks of 1,000, one follower in ten warm in the one real Redis) against a DynamoDB model of its
own with no latency and no capacity limit. So a process is bound by its own time: its CPU
(feedpipe, botocore, redis-py) and its Redis round trips. The model answering in the same
process is timed apart (its thread CPU) and taken out. On a 2-core machine four processes share
two cores with Redis: the per-process rate then shows the cores, not feedpipe.

Modelled: what a chunk task waits on DynamoDB, the same task run once on the virtual clock with
the model's latencies (one slot, no capacity limit, write concurrency 1 as in the million run),
its CPU not counted.

Projected: a worker process running one task at a time (a prefork child) delivers
1 / (its time + the modelled wait) items a second; the budget needs budget / 2 WCU items a
second: that many over the per-process rate processes, and that many x its time in cores.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from typing import Any

import redis

from bench._worker_util import CHUNK, UNLIMITED, TaskWorld, task_world
from bench.dynamo_model import DynamoModel
from bench.figures import Figure
from bench.virtual_clock import VirtualClock, sleeps_in

PROCESSES = (1, 2, 4)
BUDGET_WCU = 40_000
WCU_PER_ITEM = 2
RESULT_TIMEOUT = 600.0


def _worker(world: TaskWorld, chunks: int, ready: Any, results: Any) -> None:
    """One forked process, with its own copy of ``world`` (warmed up: its tasks have run in the
    parent): ``chunks`` timed."""
    model_cpu = 0.0
    handle = world.model.handle

    def timed(operation: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        nonlocal model_cpu
        started = time.thread_time()
        try:
            return handle(operation, params)
        finally:
            model_cpu += time.thread_time() - started

    world.model.handle = timed  # type: ignore[method-assign]
    ready.wait()
    model_cpu, wall, cpu = 0.0, time.perf_counter(), time.process_time()
    for n in range(chunks):
        world.deliver(n)
    results.put({"items": chunks * CHUNK, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                 "model_cpu": model_cpu})


def measure_processes(world: TaskWorld, n: int, chunks: int, cache: redis.Redis) -> dict[str, Any]:
    """``n`` processes at once; their items a second together, each one's time per item, and the
    Redis server's CPU per item."""
    context = multiprocessing.get_context("fork")
    ready, results = context.Barrier(n + 1), context.Queue()
    workers = [context.Process(target=_worker, args=(world, chunks, ready, results)) for _ in range(n)]
    for worker in workers:
        worker.start()
    try:
        ready.wait(timeout=RESULT_TIMEOUT)
        started, redis_cpu = time.perf_counter(), _redis_cpu(cache)
        each = [results.get(timeout=RESULT_TIMEOUT) for _ in workers]
        wall, redis_cpu = time.perf_counter() - started, _redis_cpu(cache) - redis_cpu
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
    items = sum(r["items"] for r in each)
    return {"processes": n, "items": items, "items_per_second": items / wall,
            "worker_seconds_per_item": sum(r["wall"] - r["model_cpu"] for r in each) / items,
            "cpu_per_item": sum(r["cpu"] - r["model_cpu"] for r in each) / items,
            "model_cpu_per_item": sum(r["model_cpu"] for r in each) / items, "redis_cpu_per_item": redis_cpu / items}


def _redis_cpu(cache: redis.Redis) -> float:
    info = cache.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def modelled_wait_per_item(redis_url: str) -> float:
    """Virtual seconds a chunk task waits on the model's latencies, per item."""
    clock = VirtualClock()
    world = task_world(CHUNK, redis_url, model=DynamoModel(clock, UNLIMITED, seed=1))
    clock.spawn(world.deliver, "chunk")
    with sleeps_in(clock):
        clock.run()
    return clock.now() / CHUNK


def fleet_for(budget_wcu: float, seconds_per_item: float, cpu_per_item: float) -> tuple[int, int]:
    """Worker processes (one task at a time each) and cores a budget's item rate needs."""
    items_per_second = budget_wcu / WCU_PER_ITEM
    return math.ceil(items_per_second * seconds_per_item), math.ceil(items_per_second * cpu_per_item)


def measure(world: TaskWorld, redis_url: str, chunks: int) -> dict[str, Any]:
    with redis.Redis.from_url(redis_url) as cache:
        runs = [measure_processes(world, n, chunks, cache) for n in PROCESSES]
    return {"runs": runs, "wait_per_item": modelled_wait_per_item(redis_url)}


def rate_figures(name: str, r: dict[str, Any]) -> list[Figure]:
    one, wait = r["runs"][0], r["wait_per_item"]
    shown = []
    for run in r["runs"]:
        per_process = run["items_per_second"] / run["processes"]
        shown.append(Figure(
            f"{name}, items/s per worker process, {run['processes']} at once (vs 1 alone)",
            round(per_process), "items/s", "the same, one process alone", round(one["items_per_second"]),
            notes=f"real processes on this machine, no modelled latency: {run['items_per_second']:,.0f} items/s in "
                  f"all; per item and process {run['worker_seconds_per_item'] * 1e6:.0f} us: "
                  f"{run['cpu_per_item'] * 1e6:.0f} us of its CPU, the rest waiting on Redis (whose CPU took "
                  f"{run['redis_cpu_per_item'] * 1e6:.0f} us) and for the shared cores; the model's own CPU "
                  f"({run['model_cpu_per_item'] * 1e6:.0f} us) taken out",
            extra=run))
    own = one["cpu_per_item"] + one["redis_cpu_per_item"]
    processes, cores = fleet_for(BUDGET_WCU, own + wait, one["cpu_per_item"])
    shown.append(Figure(
        f"{name}, worker processes for a {BUDGET_WCU:,} WCU/s budget, projected (vs cores)", processes, "processes",
        "cores: the budget's items/s x CPU per item", cores, better="lower",
        target="the measured rate and the projection say what reaches the budget", met=None,
        notes=f"{BUDGET_WCU / WCU_PER_ITEM:,.0f} items/s needed; a process (one task at a time) on a core of its "
              f"own takes {own * 1e6:.0f} us per item (its CPU and Redis's, measured, one process alone; "
              f"network round trips not counted) + {wait * 1e6:.0f} us waiting on DynamoDB (modelled "
              f"latencies, write concurrency 1): {1 / (own + wait):,.0f} items/s each; on this loaded machine "
              f"one process took {one['worker_seconds_per_item'] * 1e6:.0f} us per item before any DynamoDB "
              f"wait; Redis needs {BUDGET_WCU / WCU_PER_ITEM * one['redis_cpu_per_item']:.1f} cores more",
        extra={"wait_per_item": wait}))
    return shown


def run(world: TaskWorld, redis_url: str, chunks: int) -> list[Figure]:
    """Each process delivers ``world``'s first ``chunks`` chunks."""
    return rate_figures("million model: chunk tasks", measure(world, redis_url, chunks))
