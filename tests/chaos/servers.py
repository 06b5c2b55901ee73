"""A throwaway ``redis-server`` a test may kill and start again on the same port.

The session's shared Redis cannot be killed; these can. ``durable=True`` keeps an append-only
file fsynced on every write (what a broker that must survive a restart needs); otherwise
nothing is kept, and a restart comes back empty, as a cache does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field

import pytest
import redis

from feedpipe.dev.local import free_port, stop_process, wait_for

START_SECONDS = 20.0


class Killable:
    """A server the test started in a process group of its own, which it may kill and start again."""

    proc: subprocess.Popen[bytes] | None
    restarts: int

    def start(self) -> Killable:
        raise NotImplementedError

    def kill(self) -> None:
        """``kill -9``: no shutdown, no last save; clients see their connections drop."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> None:
        self.restarts += 1
        self.start()


@dataclass
class RedisServer(Killable):
    durable: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="feedpipe-chaos-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("needs redis-server on PATH (to kill and restart it)")
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self._dir,
             *persistence],
            stdout=subprocess.DEVNULL, start_new_session=True,
        )
        client = self.client()
        try:
            wait_for(lambda: _answers(client), START_SECONDS, f"redis-server on port {self.port}")
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self._dir, ignore_errors=True)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
