"""A post to a million followers, run by feedpipe's real fan-out code in a model of DynamoDB.

The world: one author with N followers (follow edges as the seed writes them, read back from
GSI1 in 1 MB pages), one follower in ten warm in a real Redis, a table limited to
``table_wcu`` WCU/s (full run: 1,000,000 followers at 40,000 WCU/s; ``--short``: 4,000 at 2,000).
DynamoDB is ``bench.dynamo_model`` on a ``bench.virtual_clock``; Redis is a real server.

The work runs as a worker fleet runs it, minus Celery: ``PROCESSES`` worker processes of
``THREADS`` task slots on every queue, and a pool of ``planner_slots`` on the planners' queue
alone (``feedpipe worker -Q fanout``), each process with its own boto3 client, take messages
from modelled queues (``BROKER_DELAY`` seconds from send to receive; a slot takes from its
queues in turn, as kombu does). The first message is the planner (``feeds.fanout.fan_out_post``):
it splits its walk off to more planners, writes each chunk of 1,000 followers into their warm
feeds and hands it out to the chunk queue (``deliver_chunk``), and hands its walk on after
``task_budget_seconds``, as the tasks do. A task that fails transiently is sent again after the
Celery retry backoff of ``tasks.base``.

Measured in virtual seconds from the planner's start: until every follower's durable item is
written, until every warm follower's Redis feed holds the post; WCU and RCU spent, throttles.
Beside them, floors computed in the same run: the capacity floor (items x 2 WCU / table WCU)
and the follower-walk floor (the pages walked, each at its modelled median latency). Redis
calls take the virtual time of this machine's Redis speed, timed once before the runs
(``bench.redis_time``: the same in every run, whatever the load meanwhile; the real time is
reported beside); feedpipe's own CPU takes none (it is
reported beside, per item: what a fleet must supply). The capacity spent is also priced at
on-demand rates against its floor (``bench.cost``).

A worker's own part is measured apart, its tasks run alone against the model: its peak memory
(``bench.worker_memory``) and the rate of 1, 2 and 4 real worker processes, with the fleet a
budget needs projected from it (``bench.worker_rate``).
"""

from __future__ import annotations

import heapq
import itertools
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import redis

from bench import worker_memory, worker_rate
from bench._budget_util import AppWriter, app_client, budget_figures, virtual_budget, virtual_read_pace
from bench._fanout_util import AUTHOR, TABLE, follow_items, follower_ids, put_post, warm_subset, warm_up
from bench._util import local_redis, set_local_aws_env
from bench._worker_util import ModelLoader, task_world
from bench.cost import cost_figure, walk_bytes
from bench.dynamo_capacity import DEFAULT_LATENCY, Limits
from bench.dynamo_model import DynamoModel
from bench.figures import Figure
from bench.redis_time import RedisTime, calibrate
from bench.virtual_clock import VirtualClock, sleeps_in
from feedpipe.adapters.dynamo import make_client, use_prebuilt_batch_writes
from feedpipe.adapters.tables import app_table_spec, dead_letter_table_spec
from feedpipe.config import load_settings
from feedpipe.core.backoff import full_jitter
from feedpipe.core.catalog import FANOUT_CHUNK_QUEUE, FANOUT_QUEUE
from feedpipe.core.entries import CacheEntry
from feedpipe.core.events import Post
from feedpipe.core.follower_segments import Segment
from feedpipe.feeds.fanout import Resume, deliver_chunk, fan_out_post
from feedpipe.feeds.stores import Stores
from feedpipe.services import build_stores
from feedpipe.tasks.base import RETRY_BASE_SECONDS, RETRY_MAX_SECONDS, is_permanent

Task = Callable[[Stores], None]
WARM_EVERY = 10
CHUNK = 1000
BROKER_DELAY = 0.002
WCU_PER_ITEM = 2  # base table + GSI1
QUEUES = (FANOUT_QUEUE, FANOUT_CHUNK_QUEUE)  # planners, chunks: the queues a fan-out uses


@dataclass(frozen=True)
class Size:
    followers: int
    table_wcu: float
    processes: int
    threads: int = 4
    planner_slots: int = 16  # a pool on the planners' queue alone (``-Q fanout -c 16``), one more process


@dataclass(frozen=True)
class WorkerSize:
    followers: int
    chunks: int


FULL = Size(followers=1_000_000, table_wcu=40_000, processes=8)
# Half a new on-demand table's warm throughput: 4,000 followers still take three seconds of
# capacity, long beside the walk's start, and are throttled; their walk spans pages and splits.
SHORT = Size(followers=4_000, table_wcu=2_000, processes=2)
# The write budget beside the app's own writes: a table at a new on-demand table's 4,000 WCU/s,
# the app writing a fifth of it, the fan-out held to three quarters.
BUDGET_FULL = Size(followers=100_000, table_wcu=4_000, processes=4)
BUDGET_SHORT = Size(followers=2_500, table_wcu=2_000, processes=2)  # the app still throttled without a budget
# A worker's own part: a planner walking ``followers`` alone, processes delivering ``chunks`` each.
WORKER_FULL = WorkerSize(followers=100_000, chunks=8)
WORKER_SHORT = WorkerSize(followers=1_500, chunks=1)  # the planner still hands a chunk out
APP_SHARE = 0.2
BUDGET_SHARE = 0.75


def log(message: str) -> None:
    print(f"   million: {message}", file=sys.stderr, flush=True)


class TaskQueue:
    """Broker queues in virtual time: a message is received ``BROKER_DELAY`` after it is sent, by
    an idle slot. A slot takes from the queues in turn, as a Celery worker on several queues does
    (kombu moves the queue it just took from to the back of its cycle)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self._ready: dict[str, list[tuple[float, int, Task]]] = {name: [] for name in QUEUES}
        self._cycle = list(QUEUES)
        self._order = itertools.count()
        self._idle: list[threading.Event] = []
        self.closed = False
        self.retries = 0
        self.planners = 0  # planner tasks run (the first, handed on, split off)

    def send(self, task: Task, delay: float = BROKER_DELAY, queue: str = FANOUT_QUEUE) -> None:
        at = self.clock.now() + delay
        heapq.heappush(self._ready[queue], (at, next(self._order), task))
        for woken in self._idle:  # each looks again (a slot may not take this queue)
            self.clock.wake_at(woken, at)
        self._idle.clear()

    def _take(self, queues: tuple[str, ...]) -> Task | float | None:
        """A due message (its queue goes to the back of the cycle), else when the next is due."""
        now, soonest = self.clock.now(), None
        for name in [q for q in self._cycle if q in queues]:
            heap = self._ready[name]
            if heap and heap[0][0] <= now:
                self._cycle.remove(name)
                self._cycle.append(name)
                return heapq.heappop(heap)[2]
            if heap:
                soonest = heap[0][0] if soonest is None else min(soonest, heap[0][0])
        return soonest

    def serve(self, stores: Stores, queues: tuple[str, ...] = QUEUES) -> None:
        """A slot's loop: run messages of ``queues`` as they become due (with its process's
        stores), park when there are none."""
        while not self.closed:
            taken = self._take(queues)
            if taken is None:
                woken = threading.Event()
                self._idle.append(woken)
                self.clock.park(woken)
            elif isinstance(taken, float):
                self.clock.sleep(taken - self.clock.now())
            else:
                taken(stores)

    def close(self) -> None:
        self.closed = True
        for woken in self._idle:
            woken.set()

    def with_retries(self, work: Callable[[Stores], object], attempt: int = 0, queue: str = FANOUT_QUEUE) -> Task:
        """``work`` as a task that is sent again after Celery's backoff when it fails transiently."""

        def task(stores: Stores) -> None:
            try:
                work(stores)
            except Exception as exc:
                if is_permanent(exc):
                    raise
                self.retries += 1
                delay = full_jitter(RETRY_BASE_SECONDS, attempt, RETRY_MAX_SECONDS)
                self.send(self.with_retries(work, attempt + 1, queue), delay, queue)

        return task


@dataclass
class Progress:
    """What has reached which store, at what virtual time."""

    clock: VirtualClock
    warm: set[str]
    redis_time: RedisTime
    durable: set[str] = field(default_factory=set)
    warmed: set[str] = field(default_factory=set)
    durable_at: float = 0.0
    warm_at: float = 0.0
    redis_seconds: float = 0.0

    def watch(self, stores: Stores) -> None:
        table, cache = stores.table, stores.cache
        put_items, add_to_warm = table.put_items, cache.add_to_warm_feeds

        def put(items: Iterable[dict[str, Any]]) -> int:
            batch = list(items)
            written = put_items(batch)
            self.durable.update(i["user_id"]["S"] for i in batch)
            self.durable_at = self.clock.now()
            return written

        def warm(user_ids: Iterable[str], entry: CacheEntry) -> int:
            users = list(user_ids)
            started = time.perf_counter()
            count = add_to_warm(users, entry)
            spent = time.perf_counter() - started
            self.redis_seconds += spent
            self.clock.sleep(self.redis_time.of(len(users)))
            fresh = self.warm.intersection(users) - self.warmed
            if fresh:
                self.warmed |= fresh
                self.warm_at = self.clock.now()
            return count

        table.put_items = put  # type: ignore[method-assign]
        cache.add_to_warm_feeds = warm  # type: ignore[method-assign]


def run(short: bool = False) -> list[Figure]:
    size = SHORT if short else FULL
    with local_redis() as server:
        workers = worker_figures(server.url, short, size.threads)
        result = measure(size, server.url)
        tenth = measure(size, server.url, budget_wcu=int(size.table_wcu / 10),
                        redis_time=RedisTime(**result["redis_time"]))
        shared = budget_runs(BUDGET_SHORT if short else BUDGET_FULL, server.url)
    return [*figures(size, result), warm_figure(result, tenth), *budget_figures(*shared), *workers]


def worker_figures(redis_url: str, short: bool, slots: int) -> list[Figure]:
    """One worker's own part, its tasks run alone (``bench._worker_util``): peak memory, and the
    rate of 1, 2 and 4 real processes; first, while this process is small (they fork it)."""
    world = task_world(WORKER_SHORT.followers if short else WORKER_FULL.followers, redis_url)
    chunks = WORKER_SHORT.chunks if short else WORKER_FULL.chunks
    return [*worker_memory.run(world, redis_url, slots), *worker_rate.run(world, redis_url, chunks)]


def budget_runs(size: Size, redis_url: str) -> tuple[Size, dict[str, Any], dict[str, Any]]:
    """The same fan-out while the app writes at ``APP_SHARE`` of the table's limit: without a
    write budget, and with one of ``BUDGET_SHARE`` of it."""
    app_wcu = APP_SHARE * size.table_wcu
    unbudgeted = measure(size, redis_url, app_wcu=app_wcu)
    budgeted = measure(size, redis_url, budget_wcu=int(BUDGET_SHARE * size.table_wcu), app_wcu=app_wcu)
    return size, unbudgeted, budgeted


def measure(size: Size, redis_url: str, budget_wcu: int = 0, app_wcu: float = 0.0,
            redis_time: RedisTime | None = None, read_rcu: int | None = None) -> dict[str, Any]:
    """One fan-out; with ``budget_wcu`` the fleet shares that write budget (feedpipe's policy on a
    virtual-time bucket), with ``app_wcu`` the app writes its own items alongside. The walkers
    share the follower read pace of the settings (``read_rcu`` when given), on a virtual-time
    bucket too. Runs to be compared share one ``redis_time`` (one is timed when none is given)."""
    set_local_aws_env()
    random.seed(1)  # feedpipe's and Celery's jitter
    clock = VirtualClock()
    model = DynamoModel(clock, Limits(table_wcu=size.table_wcu), seed=1)
    settings = load_settings({
        "FEEDPIPE_TABLE_NAME": TABLE, "FEEDPIPE_REDIS_URL": redis_url, "FEEDPIPE_WRITE_CONCURRENCY": "1",
        "FEEDPIPE_FANOUT_CHUNK_SIZE": str(CHUNK),
        **({} if read_rcu is None else {"FEEDPIPE_FOLLOWER_READ_RCU": str(read_rcu)}),
    })  # fmt: skip
    model.create_table(app_table_spec(TABLE))
    model.create_table(dead_letter_table_spec(settings.dead_letter_table_name))
    followers = follower_ids(size.followers)
    warm = warm_subset(followers, WARM_EVERY)
    started = time.perf_counter()
    model.load(TABLE, follow_items(followers, AUTHOR))
    post = put_post(ModelLoader(model), AUTHOR)
    cache = redis.Redis.from_url(redis_url)
    warm_up(cache, warm)
    log(f"{size.followers:,} follow edges and {len(warm):,} warm feeds set up in {time.perf_counter() - started:.1f}s")
    fleet = [build_stores(settings, model.attach(use_prebuilt_batch_writes(
        make_client("dynamodb", max_pool=max(size.threads, size.planner_slots) + 4, validate=False))))
        for _ in range(size.processes + 1)]  # the last: the planners' pool
    if redis_time is None:  # a run of its own: this machine's Redis speed, now
        redis_time = calibrate(fleet[0], redis_url, fleet[0].format.entry(post), CHUNK, WARM_EVERY)
        log(f"a warm write: {redis_time.per_call * 1e3:.2f} ms + {redis_time.per_follower * 1e6:.1f} us a follower")
    progress = Progress(clock, set(warm), redis_time)
    for stores in fleet:
        progress.watch(stores)
    if budget_wcu:
        virtual_budget(clock, fleet, budget_wcu, settings.task_budget_seconds / 2)
    if settings.follower_read_rcu:  # on the virtual clock, as the write budget
        virtual_read_pace(clock, fleet, settings.follower_read_rcu, fleet[0].table.read_pace.max_wait_seconds)  # type: ignore[union-attr]
    app = AppWriter(clock, model.attach(app_client()), TABLE, app_wcu)
    if app_wcu:
        give_up = 10 * size.followers * WCU_PER_ITEM / size.table_wcu + 60
        app.done = lambda: len(progress.durable) >= size.followers or clock.now() > give_up
        clock.spawn(app.run, "app")
    queue = TaskQueue(clock)
    queue.send(queue.with_retries(_planner(queue, post)), 0.0)
    for n, stores in enumerate(fleet[:-1]):
        for t in range(size.threads):
            clock.spawn(partial(queue.serve, stores), f"slot-{n}-{t}")
    for t in range(size.planner_slots):
        clock.spawn(partial(queue.serve, fleet[-1], (FANOUT_QUEUE,)), f"planner-{t}")
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        with sleeps_in(clock):
            clock.run()
    finally:
        queue.close()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    missing_warm = _missing_warm(cache, warm, fleet[0].format.member(post))
    cache.close()
    usage = model.usage(TABLE)
    return {
        "followers": size.followers, "warm": len(warm), "durable_items": len(progress.durable),
        "durable_seconds": progress.durable_at, "warm_seconds": progress.warm_at,
        "warm_feeds_missing_post": missing_warm, "wcu": usage.wcu, "rcu": usage.rcu,
        "throttled": dict(usage.throttled), "task_retries": queue.retries, "calls": dict(model.calls),
        "cpu_seconds": cpu, "wall_seconds": wall, "redis_seconds": progress.redis_seconds,
        "redis_time": asdict(redis_time),
        "slots": size.processes * size.threads, "budget_wcu": budget_wcu, "app_wcu": app_wcu,
        "app_written": app.written, "app_throttled": app.throttled, "planners": queue.planners,
        "walk_bytes": walk_bytes(model, TABLE, AUTHOR),
    }  # fmt: skip


def _planner(
    queue: TaskQueue, post: Post, resume: Resume | None = None, segment: Segment | None = None
) -> Callable[[Stores], object]:
    """A planner task as ``tasks.fanout`` runs it: chunks to the chunk queue, walks handed on or
    split off to the planners' queue."""

    def hand_out(chunk: list[str]) -> None:
        work = partial(_deliver, chunk)
        queue.send(queue.with_retries(work, queue=FANOUT_CHUNK_QUEUE), queue=FANOUT_CHUNK_QUEUE)

    def _deliver(chunk: list[str], stores: Stores) -> None:
        deliver_chunk(stores, post, chunk)

    def hand_on(where: Resume) -> None:
        queue.send(queue.with_retries(_planner(queue, post, where)))

    def split(upper: Segment) -> None:
        queue.send(queue.with_retries(_planner(queue, post, None, upper)))

    def plan(stores: Stores) -> object:
        queue.planners += 1
        return fan_out_post(stores, post, hand_out, resume, hand_on, segment, split)

    return plan


def _missing_warm(cache: redis.Redis, warm: list[str], member: str) -> int:
    from bench._fanout_util import missing_from_warm

    return sum(missing_from_warm(cache, warm[i : i + 10_000], member) for i in range(0, len(warm), 10_000))


def figures(size: Size, r: dict[str, Any]) -> list[Figure]:
    n = r["followers"]
    # the table's bucket starts with one second of capacity (the model's burst): that much is free
    capacity_floor = max(0.0, n * WCU_PER_ITEM - size.table_wcu) / size.table_wcu
    query = DEFAULT_LATENCY["Query"]
    pages = r["calls"].get("Query", 0)
    walk_floor = pages * (query.median + query.per_mb)
    complete = r["durable_items"] == n and r["warm_feeds_missing_post"] == 0
    setting = (f"{n:,} followers, {r['warm']:,} warm, table limit {size.table_wcu:,.0f} WCU/s, "
               f"{r['slots']} task slots ({size.processes} processes x {size.threads} on every queue, "
               f"{size.planner_slots} on planners only), chunks of {CHUNK}; "
               f"virtual time; {r['wall_seconds']:.0f}s real, {r['cpu_seconds']:.0f}s CPU")
    throttles = sum(r["throttled"].values())
    log(f"durable {r['durable_seconds']:.1f}s, warm {r['warm_seconds']:.1f}s, {r['wcu']:,.0f} WCU, "
        f"{throttles:,} throttles, {r['task_retries']} task retries; {r['wall_seconds']:.0f}s real")
    name = f"million model: {n:,}-follower post"
    return [
        Figure(f"{name}, every durable feed (vs capacity floor)", round(r["durable_seconds"], 2), "s",
               "(followers x 2 WCU - 1 s burst) / table WCU limit", round(capacity_floor, 2), better="lower",
               target="<= 1.15 x the capacity floor", met=complete and r["durable_seconds"] <= 1.15 * capacity_floor,
               notes=setting, extra=r),
        Figure(f"{name}, every warm Redis feed (vs one walker's floor)", round(r["warm_seconds"], 2), "s",
               f"{pages} GSI1 pages x median page latency, one after another", round(walk_floor, 2),
               better="lower", target="independent of the budget: see the next figure", met=None,
               notes=f"{setting}; {r['planners']} planner tasks walked the followers in parallel; "
                     f"{r['warm_feeds_missing_post']} warm feeds missing the post"),
        Figure(f"{name}, WCU per delivered item", round(r["wcu"] / max(1, r["durable_items"]), 3), "WCU",
               "1 KB item on the table + GSI1", WCU_PER_ITEM, better="lower", target="<= 1.1 x the floor",
               met=complete and r["wcu"] / max(1, r["durable_items"]) <= 1.1 * WCU_PER_ITEM,
               notes=f"{r['rcu']:,.0f} RCU read as well (follower walk and settle re-checks)"),
        Figure(f"{name}, throttled requests and items", throttles, "throttles", better="lower",
               notes=f"{r['throttled']}; {r['task_retries']} task retries"),
        Figure(f"{name}, client CPU per delivered item", round(r["cpu_seconds"] / max(1, n) * 1e6, 1), "us",
               better="lower", notes="this process: feedpipe, botocore and the model together; "
                                     f"Redis calls {r['redis_seconds']:.1f}s"),
        cost_figure(name, r),
    ]


def warm_figure(full: dict[str, Any], tenth: dict[str, Any]) -> Figure:
    """The time to warm every warm feed with a write budget of a tenth of the table's limit,
    against the time with the whole limit: the warm pass must not wait on durable capacity."""
    n = full["followers"]
    complete = all(r["warm_feeds_missing_post"] == 0 for r in (full, tenth))
    log(f"warm at a tenth of the budget: {tenth['warm_seconds']:.2f}s (durable {tenth['durable_seconds']:.1f}s)")
    return Figure(f"million model: {n:,}-follower post, every warm Redis feed at a tenth of the budget "
                  "(vs the whole budget)", round(tenth["warm_seconds"], 2), "s", "the whole table limit",
                  round(full["warm_seconds"], 2), better="lower", target="<= 1.1 x (independent of the budget)",
                  met=complete and tenth["warm_seconds"] <= 1.1 * full["warm_seconds"],
                  notes=f"write budget {tenth['budget_wcu']:,} WCU/s: every durable feed at "
                        f"{tenth['durable_seconds']:.1f}s; {tenth['planners']} planner tasks",
                  extra=tenth)


def main() -> None:
    """``python -m bench.million [FOLLOWERS [TABLE_WCU [BUDGET_WCU [READ_RCU]]]]``: one size, printed
    as the suite does; with a budget, also the time to warm against the run at the whole table
    limit; with a read pace, at that pace (``FEEDPIPE_FOLLOWER_READ_RCU``, 0: unpaced)."""
    from bench.__main__ import table

    size = Size(int(sys.argv[1]) if len(sys.argv) > 1 else FULL.followers,
                float(sys.argv[2]) if len(sys.argv) > 2 else FULL.table_wcu, FULL.processes)
    budget = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    read_rcu = int(sys.argv[4]) if len(sys.argv) > 4 else None
    with local_redis() as server:
        result = measure(size, server.url, read_rcu=read_rcu)
        shown = figures(size, result)
        if budget:
            tenth = measure(size, server.url, budget_wcu=budget, redis_time=RedisTime(**result["redis_time"]),
                            read_rcu=read_rcu)
            shown.append(warm_figure(result, tenth))
    print(table(shown))


if __name__ == "__main__":
    main()
