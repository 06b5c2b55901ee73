"""``feedpipe consume`` as an operator runs it: SIGTERM finishes, checkpoints and exits 0."""

from __future__ import annotations

import json
import signal

import pytest

from feedpipe.adapters.leases import LeaseTable
from tests.e2e.harness import LEASES, Processes, make_world, pipeline_env, wait_until

pytestmark = pytest.mark.e2e


def test_sigterm_checkpoints_and_exits_zero_and_a_restart_resumes(aws_env, redis_urls, real_redis, tmp_path):
    env = pipeline_env(aws_env, redis_urls)
    world = make_world(env, real_redis)
    world.user("a", "b")
    world.follow("b", "a")
    world.post("a", "first")
    procs = Processes(env, tmp_path)
    leases = LeaseTable(world.dynamodb, LEASES, _stream_arn(world))
    try:
        consumer = procs.consumer()
        wait_until(lambda: any(lease.checkpoint for lease in leases.list().values()), 60, "a checkpoint")
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(30) == 0, procs.logs()
        first = json.loads(procs.last_log_line(consumer))["consumed"]
        assert first["dispatched"] == 2  # the follow and the post
        assert all(lease.owner is None for lease in leases.list().values())  # handed back

        world.post("a", "second")
        again = procs.consume_until_idle()
        assert again["dispatched"] == 1  # only what came after the checkpoint
    finally:
        procs.stop_all()


def _stream_arn(world) -> str:
    return world.dynamodb.describe_table(TableName="SocialMediaApp")["Table"]["LatestStreamArn"]
