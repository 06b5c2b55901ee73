"""``feedpipe up --demo`` with nothing configured: embedded backends, feeds visibly filling,
and Ctrl-C leaving no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from tests.e2e.harness import wait_until

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; its parent reaps it.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_up_demo_fills_feeds_and_ctrl_c_leaves_nothing_behind():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEEDPIPE_", "AWS_"))}
    env["FEEDPIPE_METRICS_PORT"] = "0"  # three ports in a row may not all be free here; the scrape test covers them
    proc = subprocess.Popen(
        [sys.executable, "-m", "feedpipe", "up", "--demo"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    # An active user's cached feed holds posts: "   ana   <durable> <cached>  <newest>".
    filled = re.compile(r"^\s+(ana|ben|cleo|dev)\s+[1-9]\d*\s+[1-9]\d*\s+\S")
    try:
        try:
            wait_until(lambda: any(filled.match(line) for line in lines), 120, "an active user's feed to fill")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{''.join(lines)[-4000:]}") from None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(90)
        reader.join(10)
    output = "".join(lines)
    assert proc.returncode == 0, output
    pids = [int(p) for p in re.findall(r"pid (\d+)", output)]
    assert len(pids) >= 3, output  # moto, worker, consumer (and redis-server when on PATH)
    assert not [p for p in pids if p != proc.pid and _alive(p)], output
    assert "dead letters 0" in output
