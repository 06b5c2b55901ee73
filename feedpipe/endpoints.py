"""The HTTP side of every long-running process: ``/metrics``, ``/healthz``, ``/readyz``.

prometheus-client's own server answers every path with the metrics text, so a probe pointed at
it would pass whatever the process is doing. This one serves the metrics on ``/metrics`` only,
asks the process's ``Probe`` on the two health paths, and answers 404 elsewhere. Health bodies
are JSON saying why (``{"ok": false, "reason": "..."}``), for ``kubectl describe`` and humans.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from feedpipe.config import ConfigError
from feedpipe.health import Probe, Verdict

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server: _EndpointServer

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        elif path in ("/healthz", "/readyz"):
            self._send_verdict(self._ask(path))
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz, /readyz\n")

    def _ask(self, path: str) -> Verdict:
        probe = self.server.probe
        try:
            return probe.live() if path == "/healthz" else probe.ready()
        except Exception as exc:  # a probe that cannot answer is an answer: not ok, and why
            log.exception("health check %s failed", path)
            return Verdict(False, f"check failed: {exc!r}")

    def _send_verdict(self, verdict: Verdict) -> None:
        body = json.dumps({"ok": verdict.ok, "reason": verdict.reason, **verdict.details}, sort_keys=True)
        self._send(200 if verdict.ok else 503, "application/json", body.encode() + b"\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """Probes come every few seconds: not worth a log line each."""


class _EndpointServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], registry: CollectorRegistry, probe: Probe) -> None:
        self.registry = registry
        self.probe = probe
        super().__init__(addr, _Handler)


def serve(registry: CollectorRegistry, port: int, addr: str, probe: Probe) -> _EndpointServer | None:
    """Serve the three paths on ``addr:port`` (0 disables) from a daemon thread."""
    if not port:
        return None
    try:
        server = _EndpointServer((addr, port), registry, probe)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {addr}:{port} (FEEDPIPE_METRICS_PORT): {exc}") from None
    threading.Thread(target=server.serve_forever, name="feedpipe-endpoints", daemon=True).start()
    return server
