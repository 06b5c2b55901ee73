"""The benchmark suite runs (short mode, small sizes): every figure is produced next to its
baseline. Nothing here judges speed; `python3 dev.py bench` prints the real figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_runs_and_reports_against_its_baseline():
    result = subprocess.run([sys.executable, "-m", "bench", "--short"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["figure", "feedpipe", "baseline", "ratio"]
    figures = lines[2:]
    assert len(figures) >= 8, result.stdout
    for wanted in ("CPU per feed item", "Redis feed updates", "parse-and-dispatch", "fan-out"):
        assert any(wanted.lower() in line.lower() for line in figures), (wanted, result.stdout)
