"""The benchmark suite runs (short mode, small sizes): every figure is produced next to its
baseline. Nothing here judges speed; `python3 dev.py bench` prints the real figures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_SECONDS = 420  # about 50 s alone; under pytest's own 600 s, so a hang shows which benchmark hung


def test_every_benchmark_runs_and_reports_against_its_baseline():
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench", "--short"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=err, text=True, start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: it stops the servers and workers it started
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        err.seek(0)
        stderr = err.read()
    timed_out = f" (stopped after {TIMEOUT_SECONDS}s)" if proc.returncode < 0 else ""
    assert proc.returncode == 0, f"exit {proc.returncode}{timed_out}; stderr ends:\n{stderr[-3000:]}"
    lines = stdout.splitlines()
    assert lines[0].split()[:4] == ["figure", "feedpipe", "baseline", "ratio"]
    figures = lines[2:]
    assert len(figures) >= 8, stdout
    for wanted in ("CPU per feed item", "Redis feed updates", "parse-and-dispatch", "fan-out"):
        assert any(wanted.lower() in line.lower() for line in figures), (wanted, stdout)
