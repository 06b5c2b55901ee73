"""A throwaway RabbitMQ node a test may kill and start again on the same ports and data.

Everything lives in a directory of its own: the config file (the machine's ``rabbitmq.conf``
pins port 5672, so the node gets one naming its own listener), the Erlang cookie, the message
store, the logs. The node runs as the current user (the Debian ``/usr/sbin`` wrapper would
switch to ``rabbitmq``), with the management plugin: its HTTP API creates a vhost per test, sets
policies, describes queues and counts unacknowledged messages (which a passive declare does not).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from feedpipe.dev.local import free_port, wait_for
from tests.chaos.servers import Killable

START_SECONDS = 90.0  # 3-13 s seen on a busy 2-core machine; recovering quorum queues adds more
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # Debian's, without the user switch
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()
CONFIG = """\
listeners.tcp.1 = 127.0.0.1:{port}
loopback_users = none
management.tcp.ip = 127.0.0.1
management.tcp.port = {http_port}
collect_statistics_interval = {stats_ms}
"""
# How often the statistics the HTTP API serves are refreshed: the node's collection, and each
# quorum queue's tick, which is when it reports its counts (both 5 s by default; the tick is
# not in rabbitmq.conf's schema, hence advanced.config). Tests wait on them (``unacked``:
# tasks still running), so a fresher view ends those waits seconds sooner.
STATS_INTERVAL_MS = 500
ADVANCED_CONFIG = "[{{rabbit, [{{quorum_tick_interval, {stats_ms}}}]}}].\n"


@dataclass
class RabbitNode(Killable):
    name: str = field(default_factory=lambda: f"feedpipe-test-{os.getpid()}-{free_port()}")
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="feedpipe-rabbit-")))

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api"

    def url(self, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def start(self) -> RabbitNode:
        if not SERVER.exists():
            pytest.skip(f"needs Debian's rabbitmq-server ({SERVER})")
        (self._dir / "rabbitmq.conf").write_text(CONFIG.format(port=self.port, http_port=self.http_port,
                                                                  stats_ms=STATS_INTERVAL_MS))
        (self._dir / "advanced.config").write_text(ADVANCED_CONFIG.format(stats_ms=STATS_INTERVAL_MS))
        (self._dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        log = open(self._dir / f"node-{self.restarts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([str(SERVER)], cwd=self._dir, env=self._env(), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._answers, START_SECONDS, f"RabbitMQ node {self.name} on port {self.port}", interval=0.25)
        return self

    def _env(self) -> dict[str, str]:
        d = self._dir
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(d),
            "RABBITMQ_NODENAME": f"{self.name}@localhost",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
        }

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the RabbitMQ node exited at start:\n{self.logs()}")
        try:  # the API answers once the node has booted; the AMQP listener is up by then
            self._call("GET", "/overview", timeout=2)
            return True
        except OSError:  # urllib's errors are OSErrors
            return False

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.api}{path}", data=data, method=method,
                                         headers={"Authorization": AUTH, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def add_vhost(self, vhost: str) -> str:
        """A fresh vhost the guest user may use fully; returns its AMQP URL."""
        name = quote(vhost, safe="")
        self._call("PUT", f"/vhosts/{name}")
        self._call("PUT", f"/permissions/{name}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
        return self.url(vhost)

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("GET", f"/queues/{quote(vhost, safe='')}")
        return rows

    def unacked(self, vhost: str) -> int:
        """Messages delivered and not yet acknowledged in the vhost (tasks running), from the
        statistics (they lag up to ``STATS_INTERVAL_MS``); an unreachable node counts one, as still busy."""
        try:
            return sum(q.get("messages_unacknowledged") or 0 for q in self.queues(vhost))
        except OSError:
            return 1

    def bound_from(self, vhost: str, exchange: str) -> set[str]:
        """Names of what ``exchange`` routes to (exchanges and queues); empty while it is missing."""
        try:
            rows = self._call("GET", f"/exchanges/{quote(vhost, safe='')}/{exchange}/bindings/source")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return set()
            raise
        return {row["destination"] for row in rows}

    def set_policy(self, vhost: str, name: str, pattern: str, definition: dict[str, Any]) -> None:
        self._call("PUT", f"/policies/{quote(vhost, safe='')}/{name}",
                   {"pattern": pattern, "definition": definition, "apply-to": "queues"})

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self._dir.glob("node-*.log")))

    def stop(self) -> None:
        """Killed, not shut down: nothing on this node is kept, and a clean stop takes seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
