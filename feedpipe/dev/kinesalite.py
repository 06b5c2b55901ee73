"""A local Kinesis for tests and local runs: npm ``kinesalite`` (pinned in ``tests/kinesalite``).

kinesalite's CLI binds every interface, so node starts it here with ``listen(port, '127.0.0.1')``.
Its ``node_modules`` are installed by ``npm ci`` on first use (the optional native ``leveldown``
is left out: the server keeps streams in memory). The node process exits when its stdin closes,
so a server never outlives the Python process that started it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from feedpipe.dev.local import START_TIMEOUT_SECONDS, LocalBackendError, free_port, stop_process, wait_for

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "tests" / "kinesalite"
INSTALL_TIMEOUT_SECONDS = 300.0
RESHARD_MS = 50  # how long a stream stays CREATING/UPDATING; AWS takes seconds, tests need less

# kinesalite's request handler rethrows a request's 'error' (index.js: ``req.on('error', err =>
# { throw err })``): a client killed mid-request (ECONNRESET, "aborted") took the whole server
# down, and every other client with it. That error concerns one dead client: it is dropped.
_SERVER_JS = """
process.on('uncaughtException', (err) => {
  if (err && (err.code === 'ECONNRESET' || err.message === 'aborted')) return;
  console.error(err);
  process.exit(1);
});
const [modulePath, port, options] = process.argv.slice(1);
const server = require(modulePath)(JSON.parse(options));
server.listen(Number(port), '127.0.0.1', () => console.log('kinesalite listening'));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
"""


class KinesaliteUnavailableError(LocalBackendError):
    """node or npm is not on this machine."""


def missing_tools() -> str | None:
    """Why kinesalite cannot run here (node or npm not on PATH), or None when it can."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not on PATH: kinesalite needs node and npm" if missing else None


def ensure_installed(package_dir: Path = PACKAGE_DIR) -> Path:
    """The installed kinesalite module, running ``npm ci`` first if it is missing."""
    module = package_dir / "node_modules" / "kinesalite"
    if _installed(package_dir):
        return module
    reason = missing_tools()
    if reason:
        raise KinesaliteUnavailableError(reason)
    if not (package_dir / "package-lock.json").exists():
        raise LocalBackendError(f"no kinesalite lockfile in {package_dir}")
    # Concurrent test processes install once: the first locks the directory, the rest find it done.
    fd = os.open(package_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not _installed(package_dir):
            _npm_ci(package_dir)
    finally:
        os.close(fd)  # releases the lock
    return module


def _installed(package_dir: Path) -> bool:
    # npm writes the hidden lockfile last: an interrupted install lacks it and is redone.
    modules = package_dir / "node_modules"
    return (modules / ".package-lock.json").exists() and (modules / "kinesalite" / "package.json").exists()


def _npm_ci(package_dir: Path) -> None:
    command = [str(shutil.which("npm")), "ci", "--prefix", str(package_dir), "--omit=optional",
               "--ignore-scripts", "--no-audit", "--no-fund"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as exc:
        raise LocalBackendError(f"npm ci for kinesalite took over {INSTALL_TIMEOUT_SECONDS:.0f}s") from exc
    if result.returncode != 0:
        raise LocalBackendError(f"npm ci for kinesalite failed:\n{result.stderr[-2000:]}")


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Kinesalite:
    """``Kinesalite().start()``, then boto3 ``kinesis`` clients with ``endpoint_url=server.url``."""

    port: int = field(default_factory=free_port)
    reshard_ms: int = RESHARD_MS
    shard_limit: int = 100
    package_dir: Path = PACKAGE_DIR
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Kinesalite:
        module = ensure_installed(self.package_dir)
        node = shutil.which("node")
        if node is None:
            raise KinesaliteUnavailableError("node not on PATH: kinesalite needs node")
        delays = dict.fromkeys(("createStreamMs", "deleteStreamMs", "updateStreamMs"), self.reshard_ms)
        options = json.dumps({**delays, "shardLimit": self.shard_limit})
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [node, "-e", _SERVER_JS, str(module), str(self.port), options],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._ready, START_TIMEOUT_SECONDS, "kinesalite")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise LocalBackendError(f"kinesalite exited with {self.proc.returncode}: {self.output()}")
        return _accepts(self.port)

    def output(self) -> str:
        """What the node process printed so far (for failure messages)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            stop_process(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
