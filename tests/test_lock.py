"""The lock files still match pyproject.toml (offline: they are read, never resolved again).

``requirements-test.lock`` is what CI and ``dev.py`` install; ``requirements.lock`` is what the
image installs (``requirements-flower.lock``, its flower stage). A dependency added, dropped or
narrowed in pyproject.toml without ``python3 dev.py lock`` fails here, and so does an image
pinned apart from what was tested.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"requirements.lock": (), "requirements-flower.lock": ("flower",), "requirements-test.lock": ("test",)}
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)(?:\s*;\s*([^\\]+?))?\s*\\?$")


def _pins(lock: str) -> dict[str, set[Version]]:
    """Package -> every version pinned (a universal lock may pin two, under markers)."""
    pins: dict[str, set[Version]] = {}
    for line in (ROOT / lock).read_text().splitlines():
        if match := PIN.match(line):
            pins.setdefault(canonicalize_name(match[1]), set()).add(Version(match[2]))
    return pins


def _direct(lock: str) -> set[str]:
    """The packages the lock says were asked for by pyproject.toml itself."""
    direct, current = set(), ""
    for line in (ROOT / lock).read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match[1])
        elif re.match(r"^\s*#\s+(via\s+)?feedpipe \(pyproject\.toml\)", line):
            direct.add(current)
    return direct


def _wanted(extras: tuple[str, ...]) -> list[Requirement]:
    """pyproject.toml's requirements with ``extras`` of feedpipe itself, followed through."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in map(Requirement, project["optional-dependencies"][extra]):
            if canonicalize_name(requirement.name) == "feedpipe":
                pending.extend(requirement.extras)
            else:
                wanted.append(requirement)
    return wanted


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_the_lock_pins_what_pyproject_asks_for(lock):
    pins = _pins(lock)
    for requirement in _wanted(LOCKS[lock]):
        versions = pins.get(canonicalize_name(requirement.name))
        assert versions, f"{lock} has no {requirement.name}: run python3 dev.py lock"
        shown = sorted(map(str, versions))
        assert any(requirement.specifier.contains(v, prereleases=True) for v in versions), (
            f"{lock} pins {requirement.name} {shown}, outside {requirement}: run python3 dev.py lock"
        )


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_the_lock_asks_for_nothing_pyproject_dropped(lock):
    wanted = {canonicalize_name(r.name) for r in _wanted(LOCKS[lock])}
    assert _direct(lock) == wanted, f"{lock} is stale: run python3 dev.py lock"


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-flower.lock"])
def test_the_image_runs_the_versions_the_tests_ran(lock):
    image, tested = _pins(lock), _pins("requirements-test.lock")
    assert image
    for name, versions in image.items():
        assert versions <= tested.get(name, set()), f"{name}: {lock} {versions}, tests {tested.get(name)}"


def test_every_pin_carries_hashes():
    for lock in LOCKS:
        text = (ROOT / lock).read_text()
        pinned = re.findall(r"^[A-Za-z0-9._-]+==", text, re.M)
        hashed = re.findall(r"^[A-Za-z0-9._-]+==\S+[^\n]*\\\n\s+--hash=sha256:", text, re.M)
        assert pinned and len(pinned) == len(hashed), lock


def test_the_lock_test_notices_a_dependency_pyproject_added(monkeypatch):
    """Guard the guard: a requirement the lock does not know fails the check."""
    real = _wanted

    def with_new(extras: tuple[str, ...]) -> list[Requirement]:
        return [*real(extras), Requirement("left-pad>=1.0")]

    monkeypatch.setitem(globals(), "_wanted", with_new)
    with pytest.raises(AssertionError, match="has no left-pad"):
        test_the_lock_pins_what_pyproject_asks_for("requirements.lock")
    with pytest.raises(AssertionError, match="is stale"):
        test_the_lock_asks_for_nothing_pyproject_dropped("requirements.lock")
