"""RabbitMQ as the broker, on a node of the module's own (booted once, a vhost per test):
quorum queues, confirmed publishes, queue depths, and the pipeline's faults end to end
(``feedpipe consume`` and prefork ``feedpipe worker`` as subprocesses, moto, real Redis)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from amqp.exceptions import MessageNacked
from celery import Celery
from kombu.exceptions import OperationalError
from kombu.transport.native_delayed_delivery import CELERY_DELAYED_DELIVERY_EXCHANGE as DELAYED_DELIVERY_EXCHANGE
from kombu.transport.native_delayed_delivery import level_name
from prometheus_client import CollectorRegistry

from feedpipe import tasks
from feedpipe.adapters.celery_app import broker_queue_depths, celery_config
from feedpipe.adapters.dispatch import TaskDispatcher
from feedpipe.adapters.rabbitmq import DEPTH_TIMEOUT_SECONDS, read_queue_depths
from feedpipe.config import Settings, load_settings
from feedpipe.core import keys
from feedpipe.core.catalog import FOLLOWS_QUEUE, QUEUES
from feedpipe.core.events import FollowStarted, to_payload
from feedpipe.metrics import QueueDepths
from feedpipe.worker import queue_depths
from tests.chaos.rabbit import RabbitNode
from tests.chaos.scenario import (
    dead_letters,
    delivered,
    finish,
    regen_jobs,
    steady_traffic,
    stream_checkpoint,
    under_way,
    write_post_without_author,
)
from tests.chaos.servers import RedisServer
from tests.e2e.harness import Processes, World, make_world, pipeline_env, wait_until
from tests.reliability import report_path

pytestmark = pytest.mark.e2e

SETTLE_SECONDS = 180


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitNode]:
    node = RabbitNode().start()
    yield node
    node.stop()


def _settings(broker_url: str) -> Settings:
    return load_settings({"FEEDPIPE_REDIS_URL": "redis://127.0.0.1:1/0", "FEEDPIPE_BROKER_URL": broker_url})


def _publisher(config: dict[str, Any]) -> TaskDispatcher:
    app = Celery("publisher")
    app.config_from_object(config)
    return TaskDispatcher(app, events_per_message=1)


def _follows(n: int, tag: str) -> list[FollowStarted]:
    return [FollowStarted(f"{tag}{i}", "star") for i in range(n)]


def test_publishes_are_confirmed_into_quorum_queues_whose_depths_are_read(rabbit: RabbitNode) -> None:
    settings = _settings(rabbit.add_vhost("confirms"))
    config = celery_config(settings)
    assert _publisher(config).dispatch(_follows(3, "a")) == 3
    queue = next(q for q in rabbit.queues("confirms") if q["name"] == FOLLOWS_QUEUE)
    assert (queue["type"], queue["durable"]) == ("quorum", True)
    assert broker_queue_depths(settings) == {name: 3 if name == FOLLOWS_QUEUE else 0 for name in QUEUES}
    scraped = _scrape_depths(settings)  # what feedpipe_queue_depth exports
    assert (scraped["celery_follows"], scraped["celery_fanout"]) == (3, 0)

    # A full queue refuses more: the broker nacks, and the publish must raise (the consumer then
    # keeps its checkpoint and publishes again later). Every publish that returned is stored.
    rabbit.set_policy("confirms", "full", f"^{FOLLOWS_QUEUE}$", {"max-length": 1, "overflow": "reject-publish"})
    publisher, accepted = _publisher(config), []

    def refused() -> bool:
        try:
            publisher.dispatch(_follows(1, f"b{len(accepted)}"))
        except OperationalError as exc:
            assert isinstance(exc.__cause__, MessageNacked), repr(exc.__cause__)
            return True
        accepted.append(1)  # published before the policy applied
        return False

    wait_until(refused, 30, "a publish to the full queue to be refused")
    assert broker_queue_depths(settings)[FOLLOWS_QUEUE] == 3 + len(accepted)
    # What confirms prevent: without them the same publish returns as if stored, and is dropped.
    unconfirmed = {**config, "broker_transport_options": {}}
    assert _publisher(unconfirmed).dispatch(_follows(1, "c")) == 1
    assert broker_queue_depths(settings)[FOLLOWS_QUEUE] == 3 + len(accepted)


def _scrape_depths(settings: Settings) -> dict[str, float]:
    """``feedpipe_queue_depth`` as a worker's /metrics would serve it (the app's lists stubbed)."""
    lists = SimpleNamespace(depth=lambda: 0, processing_depth=lambda: 0, count=lambda: 0)
    stores = SimpleNamespace(regen_queue=lists, dead_letters=lists)
    registry = CollectorRegistry()
    registry.register(QueueDepths(lambda: queue_depths(stores, settings)))
    return {s.labels["queue"]: s.value for m in registry.collect() for s in m.samples}


def test_queue_depths_never_hang_on_a_broker_that_does_not_answer() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never speaks AMQP
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings = _settings(f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}//")
        started = time.monotonic()
        assert broker_queue_depths(settings) == {}
        assert time.monotonic() - started < DEPTH_TIMEOUT_SECONDS + 2


def test_a_countdown_waits_in_the_broker_not_in_a_worker(aws_env, redis_urls, real_redis, rabbit, tmp_path) -> None:
    """A retry's countdown on quorum queues: the message waits in Celery's delayed-delivery
    queues (declared and bound by the worker at start), then reaches its queue and runs."""
    env = pipeline_env(aws_env, (redis_urls[0], rabbit.add_vhost("delays")))
    world = make_world(env, real_redis)
    world.user("star", "fan")
    world.bulk_follow(["fan"], "star")
    world.post("star", "s1")
    procs = Processes(env, tmp_path)
    try:
        procs.worker(1)
        wait_until(lambda: FOLLOWS_QUEUE in rabbit.bound_from("delays", DELAYED_DELIVERY_EXCHANGE), 90,
                   "the worker to bind its queues for delayed delivery")
        app = Celery("publisher")
        app.config_from_object(celery_config(world.settings))
        app.send_task(tasks.APPLY_FOLLOWS, args=[[to_payload(FollowStarted("fan", "star"))]], queue=FOLLOWS_QUEUE,
                      countdown=3)
        # 3 s is 0b11: the message sits in the 2 s and then the 1 s delay queue, not with the worker.
        waiting = read_queue_depths(world.settings.broker, [FOLLOWS_QUEUE, level_name(1), level_name(0)])
        assert waiting[FOLLOWS_QUEUE] == 0 and waiting[level_name(1)] + waiting[level_name(0)] == 1, waiting
        wait_until(lambda: world.durable_feeds().get("fan") == {"s1"}, 60, "the delayed task to run")
    finally:
        procs.stop_all()


# -- the pipeline on RabbitMQ, faults injected ---------------------------------------------


@pytest.fixture
def feed_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()  # volatile, as the app's cache is: a restart comes back empty
    yield server
    server.stop()


def _pipeline(aws_env: dict[str, str], rabbit: RabbitNode, vhost: str, feed_redis: RedisServer,
              tmp_path: Path, **settings: str) -> tuple[World, Processes]:
    env = pipeline_env(aws_env, (feed_redis.url, rabbit.add_vhost(vhost)), **settings)
    world = make_world(env, feed_redis.client())
    world.amqp_unacked = lambda: rabbit.unacked(vhost)
    return world, Processes(env, tmp_path)


def _publish_failures(procs: Processes) -> int:
    return procs.logs(tail=10**8).count("cannot publish")


def test_a_worker_killed_and_the_broker_killed_mid_run_lose_nothing(
    aws_env, rabbit, feed_redis, tmp_path, tmp_path_factory
) -> None:
    """The pipeline end to end on RabbitMQ, durable and cached feeds exact, through a prefork
    worker ``kill -9``-ed mid-fan-out (its unacknowledged tasks go back to their queue) and the
    broker node ``kill -9``-ed mid-run (the consumer holds its checkpoint while publishes fail;
    the quorum queues come back from disk with every confirmed message)."""
    started = time.monotonic()
    world, procs = _pipeline(aws_env, rabbit, "faults", feed_redis, tmp_path, FEEDPIPE_FANOUT_CHUNK_SIZE="100")
    try:
        fans, crew = under_way(world, procs, fans=600, warm=60)
        crew.kill9("worker0")
        assert delivered(world, "s1") < len(fans) - 1, "the fan-out ended before the worker was killed"
        # No worker now: the rest of the fan-out waits, ready in its queue, and status says so.
        status = procs.run("status", "--json")
        assert status.returncode == 0, status.stderr
        # The planner's message or, once it has planned, the chunks it sent: either is waiting.
        queues = json.loads(status.stdout)["queues"]
        assert queues["tasks:fanout"] + queues["tasks:fanout_chunks"] >= 1, status.stdout
        crew.start("worker0")
        rabbit.kill()
        steady_traffic(world, fans, tag="b")  # records the consumer reads but cannot publish
        wait_until(lambda: _publish_failures(procs) >= 1, 90, "the consumer to find the broker gone")
        held, failures = stream_checkpoint(world), _publish_failures(procs)
        # One more refused attempt: the checkpoint holds across retries. Not more: the consumer's
        # backoff grows with each (up to 30 s), and all of it is waited out after the restart.
        wait_until(lambda: _publish_failures(procs) >= failures + 1, 90, "one more publish attempt")
        assert stream_checkpoint(world) == held, "the checkpoint moved past records never published"
        assert crew.exited() == [], procs.logs()
        rabbit.restart()

        figures = {"test": "rabbitmq_worker_and_broker_killed", "seed": 0, "fans": len(fans),
                   "posts": len(world.posts), "faults": {"worker_kills": 1, "broker_kills": 1,
                                                         "publish_failures": _publish_failures(procs)}}
        finish(world, procs, figures, report_path(tmp_path_factory.getbasetemp()), SETTLE_SECONDS, started=started)
        assert crew.exited() == [], procs.logs()
        assert stream_checkpoint(world) != held
    finally:
        procs.stop_all()


def test_the_cache_redis_restarted_empty_mid_fanout_with_rabbitmq(
    aws_env, rabbit, feed_redis, tmp_path, tmp_path_factory
) -> None:
    """Tasks that hit the dead cache retry (their countdown waits in RabbitMQ's delayed-delivery
    queues); durable feeds end exact; users who come back get exact caches through
    ``feed_regen_queue``; nobody else is warmed."""
    started = time.monotonic()
    world, procs = _pipeline(aws_env, rabbit, "cache-restart", feed_redis, tmp_path,
                             FEEDPIPE_FANOUT_CHUNK_SIZE="100", FEEDPIPE_REGEN_DRAIN_EVERY_SECONDS="1")
    try:
        bad_post = lambda: write_post_without_author(world, "bad1")  # noqa: E731 - dead-lettered first
        fans, crew = under_way(world, procs, fans=600, warm=80, first=bad_post)
        wait_until(lambda: "bad1" in dead_letters(world).values(), 60, "the bad post to be dead-lettered")
        letters_before = dead_letters(world)
        feed_redis.kill()
        assert delivered(world, "s1") < len(fans) - 1, "the fan-out ended before the restart"
        feed_redis.restart()
        # Empty: only a walker's read pace, charged again at once, may be back already.
        assert [k for k in world.redis.keys("*") if b":follower_reads:" not in k] == []
        assert dead_letters(world).items() >= letters_before.items(), "a dead letter was lost with the cache Redis"
        back = [*fans[:80:8], *fans[400:402], "bob"]  # some were warm, some never were
        world.redis.lpush(keys.REGEN_QUEUE, *regen_jobs(back))
        world.warm = set(back)
        procs.beat()
        world.post("star", "s4")
        figures = {"test": "rabbitmq_redis_restart", "seed": 0, "fans": len(fans), "posts": len(world.posts),
                   "faults": {"redis_restarts": feed_redis.restarts}, "rewarmed": len(back)}
        finish(world, procs, figures, report_path(tmp_path_factory.getbasetemp()), SETTLE_SECONDS, started=started)
        assert crew.exited() == [], procs.logs()
        assert dead_letters(world).items() >= letters_before.items()
    finally:
        procs.stop_all()
