"""Fixtures for the pure tests: sample stream records from ``tests/events/`` and sample posts."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from feedpipe.core.events import Post

EVENTS_DIR = Path(__file__).resolve().parents[1] / "events"

EventLoader = Callable[[str], dict[str, Any]]


@cache
def _read_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture
def load_event() -> EventLoader:
    """``load_event("post_insert")``: a fresh copy of ``tests/events/post_insert.json``."""
    return lambda name: copy.deepcopy(_read_event(name))


@pytest.fixture(autouse=True)
def _no_feedpipe_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings tests see only the environment they pass, not the developer's shell."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("FEEDPIPE_"):
            monkeypatch.delenv(name)


def make_post(post_id: str = "p1", author_id: str = "u_alice", **fields: Any) -> Post:
    values: dict[str, Any] = {
        "post_id": post_id,
        "author_id": author_id,
        "author_username": "alice",
        "content_preview": "hello",
        "content_type": "text",
        "created_at": "2024-01-15T10:30:00.123Z",
        "created_at_ms": 1705314600123,
    }
    values.update(fields)
    return Post(**values)


@pytest.fixture
def post_factory() -> Callable[..., Post]:
    return make_post
