"""Fixtures of the end-to-end tests; each module defines its own ``env`` (the processes' settings)."""

from __future__ import annotations

import pytest

from tests.e2e.harness import Processes, World, make_world


@pytest.fixture
def world(env, real_redis) -> World:
    return make_world(env, real_redis)


@pytest.fixture
def procs(env, tmp_path):
    processes = Processes(env, tmp_path)
    yield processes
    processes.stop_all()
