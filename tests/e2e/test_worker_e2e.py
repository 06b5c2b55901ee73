"""A real prefork worker on a real Redis broker: JSON only, bad payloads dead-lettered."""

from __future__ import annotations

import pytest
from celery import Celery

from feedpipe import tasks
from feedpipe.adapters.celery_app import celery_config
from feedpipe.core.catalog import FOLLOWS_QUEUE
from feedpipe.core.events import FollowStarted, to_payload
from tests.e2e.harness import Processes, World, make_world, pipeline_env, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def world_and_procs(aws_env, redis_urls, real_redis, tmp_path):
    env = pipeline_env(aws_env, redis_urls)
    world = make_world(env, real_redis)
    world.user("star", "trusted", "attacker_target")
    world.bulk_follow(["trusted", "attacker_target"], "star")
    world.post("star", "s1")
    procs = Processes(env, tmp_path)
    yield world, procs
    procs.stop_all()


@pytest.fixture
def app(world_and_procs):
    """This process publishes to the worker's broker through a Celery app of its own: the
    module-level one may carry another test's configuration."""
    sender = Celery("feedpipe-test-sender")
    sender.config_from_object(celery_config(world_and_procs[0].settings))
    yield sender
    sender.close()


def _feed(world: World, user: str) -> set[str]:
    return world.durable_feeds().get(user, set())


def test_a_pickled_message_is_refused_and_never_run(world_and_procs, app) -> None:
    world, procs = world_and_procs
    procs.worker()
    # Same task, same arguments: once pickled (refused), once as JSON (run).
    app.send_task(tasks.APPLY_FOLLOWS, args=[[to_payload(FollowStarted("attacker_target", "star"))]],
                  queue=FOLLOWS_QUEUE, serializer="pickle")
    app.send_task(tasks.APPLY_FOLLOWS, args=[[to_payload(FollowStarted("trusted", "star"))]],
                  queue=FOLLOWS_QUEUE)

    wait_until(lambda: _feed(world, "trusted") == {"s1"}, 60, "the JSON task to run")
    assert _feed(world, "attacker_target") == set()
    wait_until(lambda: "pickle" in procs.logs(), 30, "the worker to log the refusal")


def test_a_broken_payload_is_dead_lettered_and_the_worker_goes_on(world_and_procs, app) -> None:
    world, procs = world_and_procs
    procs.worker()
    broken = {"type": "follow_started", "follower_id": "trusted"}  # no followed_id
    app.send_task(tasks.APPLY_FOLLOWS, args=[[broken, to_payload(FollowStarted("trusted", "star"))]],
                  queue=FOLLOWS_QUEUE)

    wait_until(lambda: _feed(world, "trusted") == {"s1"}, 60, "the good event to run")
    (letter,) = world.stores.dead_letters.entries()
    assert letter["source"] == f"task:{tasks.APPLY_FOLLOWS}"
    assert letter["payload"] == broken and "followed_id" in letter["reason"]
