"""Small helpers shared by the benchmark modules: sample data, timers, a throwaway Redis."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from feedpipe.core.events import Post
from feedpipe.core.records import cut_preview

ROOT = Path(__file__).resolve().parents[1]
EVENTS_DIR = ROOT / "tests" / "events"
LOCAL_AWS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
}


@cache
def _event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def load_event(name: str) -> dict[str, Any]:
    """A fresh copy of ``tests/events/{name}.json``."""
    return copy.deepcopy(_event(name))


def sample_content() -> str:
    """The sample post's text (a realistic 200-character preview once cut)."""
    return str(_event("post_insert")["dynamodb"]["NewImage"]["content"]["S"])


def user_id(n: int) -> str:
    return f"u_{n:06d}"


def make_post(n: int = 1, author: str = "u_alice") -> Post:
    """A post shaped like the app's: id ``post_{ms}_{author}``, a 200-character preview."""
    created_ms = 1705314600123 + n * 1000
    seconds, millis = divmod(created_ms, 1000)
    created_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
    return Post(
        post_id=f"post_{created_ms}_{author}",
        author_id=author,
        author_username=author.removeprefix("u_"),
        content_preview=cut_preview(sample_content()),
        content_type="text",
        created_at=created_at,
        created_at_ms=created_ms,
    )


def set_local_aws_env() -> None:
    for name, value in LOCAL_AWS_ENV.items():
        os.environ.setdefault(name, value)


def cpu_seconds(fn: Callable[[], object]) -> float:
    """Process CPU time (every thread of this process) spent in ``fn``."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def wall_seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status (VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@contextlib.contextmanager
def local_redis() -> Iterator[Any]:
    """A throwaway real redis-server, stopped on exit."""
    from feedpipe.dev.local import LocalRedis

    server = LocalRedis().start()
    try:
        yield server
    finally:
        server.stop()
