"""Faults injected into a real run (``feedpipe consume`` and a prefork ``feedpipe worker`` as
subprocesses, moto, real Redis servers of the test's own), each ending with every durable and
cached feed exact, and each proving its faults happened:

- DynamoDB throttling and ``UnprocessedItems`` on a share of BatchWriteItem calls;
- moto answering HTTP 500 to every DynamoDB and Streams call for a few seconds;
- the feed cache's Redis killed and restarted (empty) in the middle of a big fan-out;
- the broker unreachable for a while: the checkpoint holds, nothing exits, nothing is lost.

The DynamoDB faults are injected inside the processes by botocore event hooks (``tests.faults``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedpipe.core import keys
from tests.chaos.scenario import (
    Crew,
    build_history,
    dead_letters,
    delivered,
    finish,
    regen_jobs,
    steady_traffic,
    stop_beat_once_drained,
    stream_checkpoint,
    under_way,
    write_post_without_author,
)
from tests.chaos.servers import RedisServer
from tests.e2e.harness import Processes, World, make_world, pipeline_env, wait_until
from tests.faults import ENTRY, FaultPlan, injected_counts
from tests.reliability import report_path

pytestmark = pytest.mark.e2e

SETTLE_SECONDS = 180
# Follower pages and chunks sized so each big fan-out below still spans several pages and
# chunks (with planners splitting the range) on a graph moto writes quickly.
PAGE, CHUNK = 250, 125


@pytest.fixture
def feed_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def broker() -> Iterator[RedisServer]:
    """Append-only, fsynced on every write: queued and unacknowledged tasks survive a restart,
    as they must on a production broker (a broker that forgets its queue loses work whatever
    feedpipe does)."""
    server = RedisServer(durable=True).start()
    yield server
    server.stop()


def _run(aws_env: dict[str, str], feed_redis: RedisServer, broker: RedisServer, tmp_path: Path,
         plan: FaultPlan | None = None, **settings: str) -> tuple[World, Processes]:
    settings = {"FEEDPIPE_FOLLOWER_PAGE_SIZE": str(PAGE), "FEEDPIPE_FANOUT_CHUNK_SIZE": str(CHUNK), **settings}
    env = pipeline_env(aws_env, (feed_redis.url, broker.url), **settings)
    if plan is not None:
        env = plan.env(env)
    procs = Processes(env, tmp_path, entry=ENTRY if plan else ("-m", "feedpipe"))
    return make_world(env, feed_redis.client()), procs


def _report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return report_path(tmp_path_factory.getbasetemp())


def test_throttling_and_unprocessed_items_on_a_third_of_batch_writes(
    aws_env, feed_redis, broker, tmp_path, tmp_path_factory
) -> None:
    started = time.monotonic()
    plan = FaultPlan(seed=7, throttle_share=0.3, unprocessed_share=0.3, counts_dir=str(tmp_path),
                     throttle_backoff_base=0.05)
    # No process dies here: a visibility timeout above the (throttled) longest task, as the
    # README asks, so no task is redelivered while it still runs. With botocore's throttle
    # backoff based on 50 ms the longest task takes ~4 s; 20 s leaves room, and the unfollows'
    # re-checks (a quarter of it plus twice the lag bound later) wait 6 s, not the 31 s of 120.
    # The faults hit a share of BatchWriteItem calls, so this one keeps 2,000 fans in pages of
    # 1,000 and chunks of 500: 78-108 throttles and 58-81 short batches in runs here, of the 20
    # of each asked for below.
    world, procs = _run(aws_env, feed_redis, broker, tmp_path, plan, FEEDPIPE_TASK_VISIBILITY_TIMEOUT_SECONDS="20",
                        FEEDPIPE_FOLLOWER_PAGE_SIZE="1000", FEEDPIPE_FANOUT_CHUNK_SIZE="500")
    fans = build_history(world, fans=2000, warm=100)
    steady_traffic(world, fans)
    crew = Crew(procs)
    try:
        crew.start()
        figures = {"test": "faults_throttling", "seed": plan.seed, "fans": len(fans), "posts": len(world.posts)}
        finish(world, procs, figures, _report(tmp_path_factory), SETTLE_SECONDS, started=started,
               faults_dir=tmp_path)
        assert crew.exited() == [], procs.logs()
    finally:
        procs.stop_all()
    faults = injected_counts(tmp_path)
    assert faults["throttled"] >= 20 and faults["unprocessed_calls"] >= 20, faults


def test_moto_answering_500_for_seconds_mid_run(aws_env, feed_redis, broker, tmp_path, tmp_path_factory) -> None:
    started = time.monotonic()
    down = tmp_path / "moto-down"
    plan = FaultPlan(seed=8, outage_file=str(down), counts_dir=str(tmp_path))
    world, procs = _run(aws_env, feed_redis, broker, tmp_path, plan)
    try:
        fans, crew = under_way(world, procs, fans=600, warm=60)
        down.touch()
        outage_began = time.monotonic()
        steady_traffic(world, fans, tag="b")  # the app goes on writing meanwhile
        wait_until(lambda: injected_counts(tmp_path)["http_500"] >= 30 and time.monotonic() - outage_began >= 4,
                   60, "four seconds of 500s")
        down.unlink()
        figures = {"test": "faults_moto_500", "seed": plan.seed, "fans": len(fans), "posts": len(world.posts),
                   "outage_seconds": round(time.monotonic() - outage_began, 1)}
        finish(world, procs, figures, _report(tmp_path_factory), SETTLE_SECONDS, started=started,
               faults_dir=tmp_path)
        # Nobody exited: the consumer waited the outage out, tasks retried with backoff.
        assert crew.exited() == [], procs.logs()
    finally:
        procs.stop_all()
    assert injected_counts(tmp_path)["http_500"] >= 30


def test_feed_redis_restarted_mid_fanout(aws_env, feed_redis, broker, tmp_path, tmp_path_factory) -> None:
    """The cache keeps nothing on disk: after the restart every feed is cold. The app rebuilds
    the feeds of users who come back (``feed_regen_queue``, drained by beat's schedule); those
    must end exact, every other user must have no cached feed (fan-out never warms a feed), and
    every durable feed must be exact. A dead letter written before the restart is still there
    after it (they once lived in this Redis)."""
    started = time.monotonic()
    world, procs = _run(aws_env, feed_redis, broker, tmp_path, FEEDPIPE_REGEN_DRAIN_EVERY_SECONDS="0.5")
    try:
        bad_post = lambda: write_post_without_author(world, "bad1")  # noqa: E731 - dead-lettered first
        fans, crew = under_way(world, procs, fans=1000, warm=150, first=bad_post)
        wait_until(lambda: "bad1" in dead_letters(world).values(), 60, "the bad post to be dead-lettered")
        letters_before = dead_letters(world)
        warm_before = sum(1 for _ in world.redis.scan_iter(match=f"{keys.FEED_CACHE_PREFIX}*", count=1000))
        feed_redis.kill()
        assert delivered(world, "s1") < len(fans) - 1, "the fan-out ended before the restart"
        feed_redis.restart()
        # Empty: only a walker's read pace, charged again at once, may be back already.
        assert [k for k in world.redis.keys("*") if b":follower_reads:" not in k] == []
        assert dead_letters(world).items() >= letters_before.items(), "a dead letter was lost with the cache Redis"
        # Users coming back: some were warm, some never were; one more post reaches them.
        back = [*fans[:150:5], *fans[500:510], "bob"]
        # Most as the app's follow path pushes them (cache rebuilds), a few asking for the
        # durable feed's repair too (which a Redis restart never damages).
        world.redis.lpush(keys.REGEN_QUEUE, *regen_jobs(back))
        world.warm = set(back)
        beat = procs.beat()
        world.post("star", "s4")
        stop_beat_once_drained(world, beat, SETTLE_SECONDS)
        figures = {"test": "faults_redis_restart", "seed": 0, "fans": len(fans), "posts": len(world.posts),
                   "faults": {"redis_restarts": feed_redis.restarts}, "warm_before": warm_before,
                   "rewarmed": len(back)}
        finish(world, procs, figures, _report(tmp_path_factory), SETTLE_SECONDS, started=started)
        assert crew.exited() == [], procs.logs()
        assert dead_letters(world).items() >= letters_before.items()
    finally:
        procs.stop_all()
    assert warm_before > 50


def test_broker_unreachable_holds_the_checkpoint_and_loses_nothing(
    aws_env, feed_redis, broker, tmp_path, tmp_path_factory
) -> None:
    started = time.monotonic()
    # Chunks of 500 (pipeline_env's): the broker dies while a chunk task writes. With chunks of
    # 125 it died as several tasks finished at once, and a worker losing its Redis broker with
    # acks pending can exit on kombu 5.7.0's AttributeError in restore_unacked (seen once in
    # four runs here): a defect of its own, which this test is not the one to hunt.
    world, procs = _run(aws_env, feed_redis, broker, tmp_path, FEEDPIPE_FOLLOWER_PAGE_SIZE="1000",
                        FEEDPIPE_FANOUT_CHUNK_SIZE="500")
    try:
        fans, crew = under_way(world, procs, fans=1000, warm=60)
        broker.kill()
        steady_traffic(world, fans, tag="b")  # records the consumer reads but cannot publish
        wait_until(lambda: _publish_failures(procs) >= 1, 60, "the consumer to find the broker gone")
        held = stream_checkpoint(world)
        failures = _publish_failures(procs)
        wait_until(lambda: _publish_failures(procs) >= failures + 3, 60, "three more publish attempts")
        assert stream_checkpoint(world) == held, "the checkpoint moved past records never published"
        assert crew.exited() == [], procs.logs()
        broker.restart()
        figures = {"test": "faults_broker_outage", "seed": 0, "fans": len(fans), "posts": len(world.posts),
                   "faults": {"broker_outages": 1, "publish_failures": _publish_failures(procs)}}
        finish(world, procs, figures, _report(tmp_path_factory), SETTLE_SECONDS, started=started)
        assert crew.exited() == [], procs.logs()
        assert stream_checkpoint(world) != held
    finally:
        procs.stop_all()


def _publish_failures(procs: Processes) -> int:
    return procs.logs(tail=10**8).count("cannot publish")
