"""A broker that would lose checkpointed work is refused at start, with one line; a durable one,
RabbitMQ, or an explicit opt-in for demos and tests, is not. Checked against real Redis servers."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from feedpipe.adapters.durability import check_broker
from feedpipe.adapters.redis_client import check_durable_broker
from feedpipe.config import ConfigError, load_settings
from feedpipe.dev.local import free_port, stop_process, wait_for

VOLATILE = ("--appendonly", "no")
DURABLE = ("--appendonly", "yes", "--maxmemory-policy", "noeviction")


@pytest.fixture
def start_redis(tmp_path) -> Iterator:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server on PATH")
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> str:
        port = free_port()
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--dir", str(tmp_path), *options], stdout=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)
        client = redis.Redis(port=port)
        wait_for(lambda: _pings(client), 20, "redis-server")
        client.close()
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for proc in started:
        stop_process(proc)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def refusal(broker: str, **env: str) -> str:
    settings = load_settings({"FEEDPIPE_REDIS_URL": broker, **env})
    with pytest.raises(ConfigError) as caught:
        check_durable_broker(settings)
    return str(caught.value)


def test_a_redis_without_an_append_only_file_is_refused(start_redis) -> None:
    url = start_redis(*VOLATILE)

    message = refusal(url)

    assert message.startswith(f"bad setting FEEDPIPE_BROKER_URL: {url} would lose work already checkpointed")
    assert "appendonly is no (set appendonly yes)" in message
    assert "FEEDPIPE_ALLOW_VOLATILE_BROKER=true" in message
    assert "\n" not in message


def test_a_redis_that_may_evict_is_refused_even_with_an_append_only_file(start_redis) -> None:
    url = start_redis("--appendonly", "yes", "--maxmemory-policy", "allkeys-lru")

    message = refusal(url)

    assert "maxmemory-policy is allkeys-lru (set maxmemory-policy noeviction)" in message
    assert "appendonly" not in message.split("checkpointed:")[1]


def test_a_durable_redis_and_rabbitmq_pass(start_redis, caplog) -> None:
    caplog.set_level(logging.WARNING)
    check_durable_broker(load_settings({"FEEDPIPE_REDIS_URL": start_redis(*DURABLE)}))
    # quorum queues are replicated and on disk: nothing to ask, and nothing is reached
    check_broker(load_settings({"FEEDPIPE_BROKER_URL": "amqp://guest:guest@nowhere:5672//"}), None)
    assert not caplog.records


def test_the_opt_in_lets_a_volatile_broker_start_with_a_warning(start_redis, caplog) -> None:
    caplog.set_level(logging.WARNING)
    url = start_redis(*VOLATILE)

    check_durable_broker(load_settings({"FEEDPIPE_REDIS_URL": url, "FEEDPIPE_ALLOW_VOLATILE_BROKER": "true"}))

    assert [
        r.getMessage().split(":")[0] for r in caplog.records
    ] == ["volatile broker allowed by FEEDPIPE_ALLOW_VOLATILE_BROKER"]


def test_a_memory_broker_is_refused() -> None:
    settings = load_settings({"FEEDPIPE_BROKER_URL": "memory://"})
    with pytest.raises(ConfigError, match="keeps messages in one process's memory"):
        check_broker(settings, None)


def test_a_redis_that_hides_its_configuration_is_said_once_and_accepted(start_redis, caplog) -> None:
    caplog.set_level(logging.WARNING)
    url = start_redis(*VOLATILE, "--rename-command", "CONFIG", "")  # as managed services do

    check_durable_broker(load_settings({"FEEDPIPE_REDIS_URL": url}))

    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"cannot read the broker's configuration at {url}")
    assert "appendonly yes" in line and "noeviction" in line


def test_an_unreachable_broker_is_not_a_bad_setting(caplog) -> None:
    caplog.set_level(logging.WARNING)
    url = f"redis://127.0.0.1:{free_port()}/0"

    check_durable_broker(load_settings({"FEEDPIPE_BROKER_URL": url, "FEEDPIPE_REDIS_CLUSTER": "off"}))

    assert any("cannot check that the broker" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("command", ["consume", "worker", "beat"])
def test_every_process_that_publishes_or_runs_tasks_refuses_a_volatile_broker(start_redis, command) -> None:
    url = start_redis(*VOLATILE)
    env = {"PATH": "/usr/bin:/bin", "FEEDPIPE_REDIS_URL": url, "FEEDPIPE_METRICS_PORT": "0"}

    result = subprocess.run([sys.executable, "-m", "feedpipe", command], env=env, capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"feedpipe: bad setting FEEDPIPE_BROKER_URL: {url} would lose work already checkpointed")
