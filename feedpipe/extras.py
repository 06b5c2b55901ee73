"""Optional dependencies, named at once: a command that needs an extra that is not installed
stops before it does anything, with one line saying what to install."""

from __future__ import annotations

import importlib.util

from feedpipe.config import ConfigError

# What each extra brings that a command imports (moto's server runs on flask).
EXTRA_MODULES = {
    "local": ("moto", "flask"),
}


class MissingExtraError(ConfigError):
    """An optional dependency is not installed; the message names the extra."""


def require_extra(extra: str, purpose: str, modules: tuple[str, ...] | None = None) -> None:
    """MissingExtraError unless every module of ``extra`` (or ``modules``) can be imported."""
    missing = [m for m in modules or EXTRA_MODULES[extra] if importlib.util.find_spec(m) is None]
    if missing:
        names, verb = " and ".join(missing), "are" if len(missing) > 1 else "is"
        raise MissingExtraError(f"{purpose} needs {names}, which {verb} not installed: pip install 'feedpipe[{extra}]'")
