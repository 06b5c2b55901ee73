"""Feeds right under GSI lag, end to end: ``consume``, two workers and ``beat`` as separate
processes on a moto server whose GSIs lag (``tests.e2e.lagging_moto``), under the app's traffic.

The traffic holds every order the issue-12 defects and the known GSI limits came from: users who
follow before anyone has posted (regen jobs warm their empty feeds), a fan-out queue backed up
(its worker starts late) while posts are deleted, followers unfollow and follow again, follows
and posts made within the lag of each other, a new follower's post deleted, and seeded random
traffic besides. It runs with 0 s of lag and with 0-2 s drawn per write (stream records of
different items up to 1 s late and out of order too), ``FEEDPIPE_GSI_LAG_SECONDS`` the bound;
every durable and cached feed must end exact.

``FEEDPIPE_GSI_TRIALS`` seeded runs per lag (CI: 1) from ``FEEDPIPE_GSI_SEED`` (2003), of
``FEEDPIPE_GSI_USERS`` users (CI: 12) and ``FEEDPIPE_GSI_STEPS`` random writes (CI: 40); the
long mode (``dev.py reliability``) runs more and bigger. Each run writes a reliability line.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from feedpipe.adapters.dynamo import make_client
from feedpipe.adapters.leases import LeaseTable
from feedpipe.adapters.redis_client import connect_broker
from feedpipe.adapters.streams import DynamoDBStreamSource
from feedpipe.config import load_settings
from feedpipe.core.catalog import (
    FANOUT_CHUNK_QUEUE,
    FANOUT_QUEUE,
    FOLLOWS_QUEUE,
    QUEUES,
    RECHECK_FOLLOWS,
    RETRACT_QUEUE,
)
from feedpipe.core.keys import OwnKeys
from feedpipe.dev.local import LOCAL_AWS_ENV, stop_process
from tests.chaos.scenario import RandomApp, RecordCounter, finish
from tests.chaos.servers import RedisServer
from tests.e2e.harness import LEASES, TABLE, Processes, World, pipeline_env, wait_until
from tests.e2e.lagging_moto import LaggingMotoServer
from tests.reliability import report_path

pytestmark = pytest.mark.e2e

TRIALS = int(os.environ.get("FEEDPIPE_GSI_TRIALS", "1"))
BASE_SEED = int(os.environ.get("FEEDPIPE_GSI_SEED", "2003"))  # without the re-check, a feed ends wrong
USERS = int(os.environ.get("FEEDPIPE_GSI_USERS", "12"))
STEPS = int(os.environ.get("FEEDPIPE_GSI_STEPS", "40"))
FANS = int(os.environ.get("FEEDPIPE_GSI_FANS", "80"))
SETTLE_SECONDS = 120
LAGS = {"none": (0.0, 0.0), "0-2s": (0.0, 2.0)}  # GSI lag drawn per write, uniform in the range
# The processes' FEEDPIPE_GSI_LAG_SECONDS: the lag's upper bound, unless told (0 turns the
# follow re-check off: the control run that shows what the lag does without it).
BOUND = os.environ.get("FEEDPIPE_GSI_TEST_BOUND")
STREAM_LATE_SECONDS = 1.0  # with a lag: each stream record up to this late (other items overtake it)


@dataclass
class Lagged:
    gsi: tuple[float, float]
    stream_max: float

    @property
    def bound(self) -> float:
        return float(BOUND) if BOUND is not None else self.gsi[1]


class AppWorld(World):
    """The harness's world, where a follow also makes the follower warm: the app pushes a regen
    job with every follow, and the beat's drain rebuilds (warms) their feed, empty or not."""

    def follow(self, follower: str, author: str) -> None:
        super().follow(follower, author)
        self.warm.add(follower)


@pytest.fixture(scope="module")
def lagging_moto() -> Iterator[LaggingMotoServer]:
    server = LaggingMotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    feed, broker = RedisServer().start(), RedisServer(durable=True).start()
    yield feed, broker
    feed.stop()
    broker.stop()


def _history(world: AppWorld, rng: random.Random) -> dict[str, list[str]]:
    """Before the consumer starts, lag off: users following a few others, "star" with fans,
    racers following "alice", newcomers following nobody, warm feeds from "news"'s n0."""
    users = [f"u{i:02d}" for i in range(USERS)]
    fans = [f"f{i:04d}" for i in range(FANS)]
    racers = [f"r{i}" for i in range(max(2, USERS // 4))]
    newbies = [f"nb{i}" for i in range(max(3, USERS // 2))]
    world.user("star", "alice", "ann", "ben", "news", *users, *racers, *newbies)
    for author in users:
        world.bulk_follow(rng.sample([u for u in users if u != author], 3), author)
    world.bulk_follow([*fans, *rng.sample(users, 4)], "star")
    world.bulk_follow(racers, "alice")
    warm = [*rng.sample(users, USERS // 2), *fans[:10], *racers]
    world.bulk_follow(warm, "news")
    world.post("news", "n0")  # never deleted: a warm feed never empties (an emptied one goes cold)
    world.historic_fanout("n0", warm=warm)
    world.mark_history_consumed()
    return {"users": users, "fans": fans, "racers": racers, "newbies": newbies}


def _backed_up(world: AppWorld, people: dict[str, list[str]], server: LaggingMotoServer) -> None:
    """While no worker takes fan-outs: newcomers follow authors who have never posted, and the
    issue's four-way race: a post whose fan-out is late is deleted, its retraction's walk runs
    while the readers have unfollowed, and they follow again before the fan-out runs."""
    for n, newbie in enumerate(people["newbies"]):
        world.follow(newbie, ("ann", "ben")[n % 2])
    world.post("star", "s1")
    world.post("alice", "a1")
    world.post("alice", "a2")
    world.delete("a1")
    for racer in people["racers"]:
        world.unfollow(racer, "alice")
    world.remove("a2")
    # Published first: queues are idle, too, before the consumer has read anything (it took
    # ~1.3 s to start while this wait, on idle queues alone, passed at once). The unfollows'
    # re-checks may still wait out their countdown: the race needs the unfollows applied.
    published = _published_check(world, server)
    wait_until(lambda: _idle_but_fanout(world, RECHECK_FOLLOWS) and published(), 60,
               "the retractions and unfollows to run")
    for racer in people["racers"]:
        world.follow(racer, "alice")
    world.post("star", "s2")
    world.delete("s2")  # deleted before its fan-out ever runs


def _within_the_lag(world: AppWorld, people: dict[str, list[str]], rng: random.Random) -> None:
    """Every worker up: the two known GSI-lag limits, each several times. Follows and a post
    made within the lag of each other (the fan-out's walk may miss the follow, the backfill the
    post); new followers whose backfill delivered a post deleted next (its retraction's walk may
    miss them); a post deleted racing its fan-out; an unfollow and a re-follow after a delete."""
    world.post("ann", "ann1")  # the newcomers' first posts
    world.post("ben", "ben1")
    wait_until(lambda: _queues_empty(world, FANOUT_QUEUE, FANOUT_CHUNK_QUEUE, RETRACT_QUEUE, FOLLOWS_QUEUE), 60,
               "the backed-up work to be taken")  # so the tasks below run within the lag
    for author in ("alice", "ann", "ben"):
        fans = rng.sample([u for u in people["users"] if u not in world.follows[author]], 2)
        for fan in fans:
            world.follow(fan, author)
        world.post(author, f"{author}-fresh")  # kept: the new fans' feeds must end with it
    newcomers = rng.sample([u for u in people["users"] if u not in world.follows["star"]], 3)
    for newcomer in newcomers:
        world.follow(newcomer, "star")
    wait_until(lambda: all(_holds(world, n, "s1") for n in newcomers), 60, "the newcomers' backfills")
    world.delete("s1")
    world.post("star", "s3")
    world.delete("s3")  # racing its own fan-out
    racer = people["racers"][0]
    world.delete("alice-fresh")
    world.unfollow(racer, "alice")
    world.follow(racer, "alice")
    world.post("ben", "ben2")


def _holds(world: World, user: str, post_id: str) -> bool:
    return any(item["post_id"] == post_id for item in world.stores.table.feed_items(user))


def _published_check(world: World, server: LaggingMotoServer) -> Callable[[], bool]:
    """A check that every record written so far is in the stream (none held back) and the
    consumer has checkpointed past it, which it does once their events are with the broker."""
    source = DynamoDBStreamSource(make_client("dynamodbstreams"), world.dynamodb, TABLE)
    (shard,) = source.list_shards()
    leases = LeaseTable(world.dynamodb, LEASES, source.stream_id)

    def published() -> bool:
        if server.pending()["stream_pending"]:
            return False
        lease = leases.list().get(shard.shard_id)
        checkpoint = lease.checkpoint if lease else None
        return checkpoint is not None and not source.read(source.iterator(shard.shard_id, checkpoint), 1).records

    return published


def _idle_but_fanout(world: World, *waiting: str) -> bool:
    """No task waiting or running but fan-outs (which no worker takes yet) and, if named, tasks
    of ``waiting`` in their countdown (a Redis broker keeps those in "unacked" too)."""
    queues = [name for name in QUEUES if name != FANOUT_QUEUE]
    if not waiting:
        return _queues_empty(world, *queues, "unacked")
    return _queues_empty(world, *queues) and all(task in waiting for task in _unacked_tasks(world))


def _unacked_tasks(world: World) -> list[str]:
    """The task name of each message the Redis broker holds unacknowledged (kombu keeps each as
    ``[message, exchange, routing_key]`` in the "unacked" hash)."""
    broker = connect_broker(world.settings)
    assert broker is not None
    prefix = OwnKeys(world.settings.key_prefix).broker_prefix
    try:
        return [json.loads(raw)[0]["headers"]["task"] for raw in broker.hvals(f"{prefix}unacked")]
    finally:
        broker.close()


def _queues_empty(world: World, *names: str) -> bool:
    """None of these lists (queues, or "unacked": tasks running or waiting a countdown) on the
    Redis broker holds a message."""
    broker = connect_broker(world.settings)
    assert broker is not None
    prefix = OwnKeys(world.settings.key_prefix).broker_prefix
    try:
        return not any(broker.exists(f"{prefix}{name}") for name in names)
    finally:
        broker.close()


def _regen_drained(world: World) -> bool:
    return world.stores.regen_queue.depth() == 0 and world.stores.regen_queue.processing_depth() == 0


def traffic(world: AppWorld, procs: Processes, server: LaggingMotoServer, lag: Lagged, seed: int) -> dict[str, Any]:
    """One run's history, processes and traffic; returns its figures for ``finish``."""
    rng = random.Random(seed)
    people = _history(world, rng)
    records = RecordCounter(world.dynamodb)
    server.set_lag(*lag.gsi, stream_max=lag.stream_max, seed=seed)
    procs.consumer()
    beat = procs.beat()
    procs.worker(2, "-Q", ",".join(q for q in QUEUES if q != FANOUT_QUEUE), "-n", "others@%h")
    _backed_up(world, people, server)
    app = RandomApp(world, rng, people["users"], protected=frozenset({"n0", "s1"}))  # s1: deleted below
    ops = [app._step() for _ in range(STEPS // 2)]  # one write at a time, fan-outs still backed up
    wait_until(lambda: _regen_drained(world), 60, "the newcomers' regen jobs to be drained")
    procs.worker(2, "-Q", FANOUT_QUEUE, "-n", "fanout@%h")  # the backed-up fan-outs run now
    _within_the_lag(world, people, rng)
    ops += [app._step() for _ in range(STEPS - STEPS // 2)]
    wait_until(lambda: server.caught_up() and _regen_drained(world), 60, "GSIs, stream and regen queue")
    stop_process(beat)  # its drains every half second would keep the broker busy for ever
    return {"test": "gsi_lag", "seed": seed, "gsi_lag": list(lag.gsi), "stream_late_max": lag.stream_max,
            "lagged_gsi_queries": server.pending()["lagged_queries"],
            "lag_bound": lag.bound, "users": len(world.users), "posts": len(world.posts) - 1,
            "records": records.records, "ops": {op: ops.count(op) for op in sorted(set(ops))}}


@pytest.mark.parametrize("seed", [BASE_SEED + n for n in range(TRIALS)])
@pytest.mark.parametrize("lag_name", list(LAGS))
def test_every_feed_ends_exact_under_gsi_lag(lag_name, seed, lagging_moto, servers, monkeypatch, tmp_path,
                                             tmp_path_factory) -> None:
    started = time.monotonic()
    lagging_moto.reset()
    aws_env = {**LOCAL_AWS_ENV, "AWS_ENDPOINT_URL": lagging_moto.url}
    for name, value in aws_env.items():
        monkeypatch.setenv(name, value)
    gsi = LAGS[lag_name]
    lag = Lagged(gsi, STREAM_LATE_SECONDS if gsi[1] else 0.0)
    feed, broker = servers
    env = pipeline_env(aws_env, (feed.url, broker.url), FEEDPIPE_GSI_LAG_SECONDS=str(lag.bound),
                       FEEDPIPE_REGEN_DRAIN_EVERY_SECONDS="0.5", FEEDPIPE_REGEN_LEASE_SECONDS="3")
    world = AppWorld(load_settings({k: v for k, v in env.items() if k.startswith("FEEDPIPE_")}), feed.client())
    procs = Processes(env, tmp_path)
    try:
        figures = traffic(world, procs, lagging_moto, lag, seed)
        finish(world, procs, {**figures, "lag": lag_name}, report_path(tmp_path_factory.getbasetemp()),
               SETTLE_SECONDS, started=started)
    finally:
        procs.stop_all()
