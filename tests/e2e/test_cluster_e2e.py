"""The whole pipeline with the app's Redis on a real three-primary Redis Cluster: a prefork
``feedpipe worker``, ``feedpipe consume`` and ``feedpipe beat`` as subprocesses, the Celery broker
on a plain Redis (kombu has no cluster transport), the app's traffic including its regeneration
jobs, and every durable and cached feed checked exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster

from feedpipe.config import CLUSTER_NEEDS_BROKER
from feedpipe.core import keys
from feedpipe.dev.local import LocalRedisCluster
from tests.e2e.harness import Processes, World, make_world, pipeline_env, wait_until

pytestmark = pytest.mark.e2e

FANS = [f"f{i:02d}" for i in range(24)]
WARM = FANS[:12]


@pytest.fixture
def cluster_client(cluster: LocalRedisCluster) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url)
    client.flushall()
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def env(aws_env, redis_urls, real_redis, cluster):  # real_redis: the broker's DB, flushed around the test
    return pipeline_env(
        aws_env, (cluster.url, redis_urls[1]),
        FEEDPIPE_REGEN_DRAIN_EVERY_SECONDS="0.5",
        FEEDPIPE_REGEN_LEASE_SECONDS="3",
        FEEDPIPE_BEAT_LOCK_SECONDS="3",
    )


@pytest.fixture
def world(env, cluster_client) -> World:
    return make_world(env, cluster_client)


def build_history(world: World) -> None:
    """Posts delivered before the consumer started; WARM users' feeds cached from them (every
    one holds n0, so removals never empty a warm feed)."""
    world.user("star", "alice", "news", "newbie", "carol")
    world.bulk_follow(FANS, "star")
    world.bulk_follow(FANS[:8], "alice")
    world.bulk_follow(WARM, "news")
    world.post("star", "p0")
    world.post("news", "n0")
    world.historic_fanout("p0", warm=[])
    world.historic_fanout("n0", warm=WARM)
    world.mark_history_consumed()


def live_traffic(world: World) -> None:
    world.post("star", "p1")
    world.post("alice", "a1")
    world.unfollow(FANS[1], "star")
    world.post("star", "p2")
    world.delete("p2")  # soft delete
    world.post("alice", "a2")
    world.remove("a2")  # hard delete
    world.post("star", "p3", visibility="private")
    world.follow(FANS[10], "alice")  # a warm feed gets a backfill; the app also queues a regen job
    world.follow("newbie", "star")  # a cold user: its regen job will warm its feed
    world.follow("carol", "alice")
    world.unfollow("carol", "alice")


def settle(world: World, procs: Processes, what: str) -> None:
    try:
        wait_until(lambda: world.settled() and drained(world), 120, what)
    except AssertionError:
        world.assert_feeds_right()
        raise AssertionError(procs.logs()) from None


def drained(world: World) -> bool:
    return world.stores.regen_queue.depth() == 0 and world.stores.regen_queue.processing_depth() == 0


def test_the_pipeline_keeps_feeds_exact_on_a_redis_cluster(
    world: World, procs: Processes, cluster_client: RedisCluster
) -> None:
    build_history(world)
    live_traffic(world)
    assert world.stores.regen_queue.depth() == 3  # the app's follows queued regeneration jobs

    procs.worker()
    procs.consume_until_idle()
    wait_until(world.settled, 120, "the stream's effects")  # regen jobs still queued

    procs.beat()  # its drains run the jobs: newbie's feed is cached from the durable one
    world.warm.update({"newbie", "carol"})  # carol's feed is empty, and warm all the same
    settle(world, procs, "the regeneration jobs to be drained")

    world.post("star", "p4")  # fan-out now reaches the feed the drain warmed
    procs.consume_until_idle()
    settle(world, procs, "p4 to reach every feed")

    world.assert_feeds_right()
    assert world.cached_feeds()["newbie"] == {"p0", "p1", "p4"}
    assert "carol" not in world.cached_feeds() and world.warm_now() == world.warm
    assert len({cluster_client.get_node_from_key(keys.feed_cache(u)).name for u in world.warm}) == 3
    operator_commands_work(world, procs)


def operator_commands_work(world: World, procs: Processes) -> None:
    status = procs.run("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["queues"][keys.REGEN_QUEUE] == 0 and report["queues"]["regen processing"] == 0
    assert set(report["queues"]) >= {"tasks:fanout", "tasks:regen"}  # read from the broker
    assert report["dead_letters"] == 0 and report["beat_lock_ttl_seconds"] > 0

    rebuilt = procs.run("rebuild", "--all-active", "--cache-only")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"rebuilt {len(world.warm)} of {len(world.warm)} users" in rebuilt.stdout
    world.assert_feeds_right()


def test_a_cluster_without_a_broker_of_its_own_stops_with_one_line(env: dict[str, str]) -> None:
    no_broker = {k: v for k, v in env.items() if k != "FEEDPIPE_BROKER_URL"}
    result = subprocess.run([sys.executable, "-m", "feedpipe", "consume"], env=no_broker,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"feedpipe: bad configuration: {CLUSTER_NEEDS_BROKER}"]
