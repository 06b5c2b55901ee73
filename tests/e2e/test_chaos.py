"""Seeded ``kill -9`` trials: random app traffic (users, follows, posts, deletes, unfollows, fan-outs
to a big account's fans) through one consumer and two prefork workers, while a random process
is killed (its whole process group) at random moments and started again. Every trial must end
with every durable and cached feed exact.

``FEEDPIPE_CHAOS_TRIALS`` trials (CI: 2), seeds from ``FEEDPIPE_CHAOS_SEED`` on (default 1000).
A trial's figures go to the reliability report (``FEEDPIPE_RELIABILITY_REPORT``); a failing
trial names its seed: ``FEEDPIPE_CHAOS_SEED=<seed> FEEDPIPE_CHAOS_TRIALS=1 pytest tests/e2e/test_chaos.py``
replays the same traffic and the same kill schedule (timing on a shared machine is not replayed).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from feedpipe.dev.local import LocalBackendError, wait_for
from tests.chaos.scenario import (
    POLL_SECONDS,
    Crew,
    RandomApp,
    RecordCounter,
    finish,
)
from tests.chaos.servers import RedisServer
from tests.e2e.harness import Processes, World, make_world, pipeline_env
from tests.reliability import report_path

pytestmark = pytest.mark.e2e

TRIALS = int(os.environ.get("FEEDPIPE_CHAOS_TRIALS", "2"))
BASE_SEED = int(os.environ.get("FEEDPIPE_CHAOS_SEED", "1000"))
SETTLE_SECONDS = 120
USERS = 24
STEPS = 60


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    feed, broker = RedisServer().start(), RedisServer(durable=True).start()  # a broker must persist
    yield feed, broker
    feed.stop()
    broker.stop()


def _build(world: World, rng: random.Random) -> tuple[list[str], int]:
    """Users who follow a few others, a big account with 400-800 fans, and warm feeds."""
    users = [f"u{i:02d}" for i in range(USERS)]
    fans = [f"f{i:04d}" for i in range(rng.randint(400, 800))]
    world.user("star", "news", *users)
    followers: dict[str, list[str]] = {u: [] for u in users}
    for user in users:
        for author in rng.sample([u for u in users if u != user], 4):
            followers[author].append(user)
    for author, group in followers.items():
        world.bulk_follow(group, author)
    world.bulk_follow([*fans, *rng.sample(users, 8)], "star")
    warm = [*rng.sample(users, 10), *rng.sample(fans, 40)]
    world.bulk_follow(warm, "news")
    world.post("news", "n0")  # never deleted: warm feeds never empty (an emptied feed goes cold)
    world.historic_fanout("n0", warm=warm)
    world.mark_history_consumed()
    return users, len(fans)


@pytest.mark.parametrize("seed", [BASE_SEED + n for n in range(TRIALS)])
def test_kill9_at_random_moments_loses_nothing(seed, aws_env, servers, tmp_path, tmp_path_factory) -> None:
    started, rng = time.monotonic(), random.Random(seed)
    feed, broker = servers
    env = pipeline_env(aws_env, (feed.url, broker.url))
    world = make_world(env, feed.client())
    users, fans = _build(world, rng)
    records = RecordCounter(world.dynamodb)
    procs = Processes(env, tmp_path)
    crew = Crew(procs, workers=2)
    app = RandomApp(world, rng, users)
    kills: Counter[str] = Counter()
    try:
        crew.start()
        # Kills at random steps of the traffic; each victim restarted a random number of steps later.
        kill_at = set(rng.sample(range(STEPS), rng.randint(2, 3)))
        restart_at: dict[int, list[str]] = {}
        ops: Counter[str] = Counter()
        for step, op in enumerate(app.steps(STEPS, big_posts=rng.randint(2, 3))):
            ops[op] += 1
            if step in kill_at:
                victim = _kill_someone(crew, rng, kills)
                restart_at.setdefault(step + rng.randint(0, 12), []).append(victim)
            for role in restart_at.pop(step, []):
                crew.start(role)
        for roles in restart_at.values():
            for role in roles:
                crew.start(role)
        # One more kill while the work drains: once a random share of the feed items is durable.
        share = rng.uniform(0.2, 0.9)
        with contextlib.suppress(LocalBackendError):  # never there: finish() says what is wrong
            wait_for(lambda: _progress(world) >= share, SETTLE_SECONDS, "feed items", interval=POLL_SECONDS)
        if _progress(world) < 1:
            crew.start(_kill_someone(crew, rng, kills))
        figures = {"test": "chaos_kill9", "seed": seed, "kills": dict(kills), "kills_total": kills.total(),
                   "fans": fans, "ops": dict(ops), "posts": len(world.posts) - 1, "users": len(world.users),
                   "records": records.records}
        finish(world, procs, figures, report_path(tmp_path_factory.getbasetemp()), SETTLE_SECONDS, started=started)
        assert kills.total() >= 2, f"seed={seed}: only {kills.total()} kills"
    finally:
        procs.stop_all()


def _kill_someone(crew: Crew, rng: random.Random, kills: Counter[str]) -> str:
    alive = [role for role in crew.roles if role in crew.running and crew.running[role].poll() is None]
    victim = rng.choice(alive)
    crew.kill9(victim)
    kills["consumer" if victim == "consumer" else "worker"] += 1
    return victim


def _progress(world: World) -> float:
    """The share of the feed items that must be durable which are."""
    durable, expected = world.durable_feeds(), world.expected_feeds()
    due = sum(map(len, expected.values()))
    there = sum(len(posts & durable.get(user, set())) for user, posts in expected.items())
    return there / due if due else 1.0
