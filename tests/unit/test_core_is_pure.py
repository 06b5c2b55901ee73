"""The pure core imports no AWS, Redis or Celery client (STYLE: "a test can prove it")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import feedpipe.core

ADAPTER_PACKAGES = {"boto3", "botocore", "redis", "celery", "kombu"}
CORE_DIR = Path(feedpipe.core.__file__).parent


def _core_modules() -> list[str]:
    return sorted(f"feedpipe.core.{p.stem}" for p in CORE_DIR.glob("*.py") if p.stem != "__init__")


def test_every_known_core_module_is_checked():
    modules = _core_modules()

    for name in ("records", "keys", "members", "items", "planning", "events", "attributes"):
        assert f"feedpipe.core.{name}" in modules


def test_core_imports_no_adapter_library():
    imports = "; ".join(f"import {m}" for m in _core_modules())
    script = (
        f"{imports}; import sys, json; "
        f"print(json.dumps(sorted(m for m in sys.modules "
        f"if m.split('.')[0] in {sorted(ADAPTER_PACKAGES)!r})))"
    )

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
