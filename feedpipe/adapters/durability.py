"""Is the broker durable? Checked at start by every process that publishes or runs tasks.

The consumer moves a shard's checkpoint once a record's tasks are with the broker, so from then
on the broker holds the only copy of that work. A Redis broker that keeps nothing on disk, or
that may evict keys, loses checkpointed work on a restart or under memory pressure, for good.
So a Redis broker must persist through its append-only file (``appendonly yes``) and never
evict (``maxmemory-policy noeviction``); anything else stops the process with one line, unless
``FEEDPIPE_ALLOW_VOLATILE_BROKER`` says a volatile broker is fine (demos, tests).

RabbitMQ holds feedpipe's queues as quorum queues, which are replicated and on disk: nothing to
check. ``memory://`` is volatile by definition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from feedpipe.config import ConfigError, Settings, redact_url

log = logging.getLogger(__name__)

DURABLE_AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
VOLATILE_SCHEMES = frozenset({"memory"})
ALLOW_SETTING = "FEEDPIPE_ALLOW_VOLATILE_BROKER"
WANTED = {"appendonly": "yes", "maxmemory-policy": "noeviction"}


@dataclass(frozen=True)
class Durability:
    """What was found: ``problems`` lists each setting to change (empty when durable);
    ``unknown`` says why nothing could be read (a managed Redis with CONFIG disabled)."""

    problems: tuple[str, ...] = ()
    unknown: str = ""


def read_durability(client: redis.Redis) -> Durability:
    """The broker Redis's persistence and eviction policy, from ``CONFIG GET``."""
    try:
        found = {name: _config_value(client, name) for name in WANTED}
    except redis.ResponseError as exc:  # CONFIG renamed or denied: managed services do that
        return Durability(unknown=" ".join(str(exc).split())[:200])
    problems = tuple(
        f"{name} is {value or 'unset'} (set {name} {WANTED[name]})"
        for name, value in found.items()
        if value != WANTED[name]
    )
    return Durability(problems=problems)


def _config_value(client: redis.Redis, name: str) -> str:
    answer = client.config_get(name)
    value = answer.get(name, answer.get(name.encode(), ""))  # type: ignore[call-overload]
    return value.decode() if isinstance(value, bytes) else str(value)


def check_broker(settings: Settings, client: redis.Redis | None) -> None:
    """Refuse a volatile broker with one line (ConfigError), unless allowed. ``client`` is a
    plain client of the broker when it is a Redis, else None."""
    scheme = urlsplit(settings.broker).scheme
    if scheme in DURABLE_AMQP_SCHEMES:
        return
    shown = redact_url(settings.broker)
    if scheme in VOLATILE_SCHEMES:
        _refuse(settings, f"{shown} keeps messages in one process's memory")
        return
    if client is None:
        return
    found = read_durability(client)
    if found.unknown:
        log.warning("cannot read the broker's configuration at %s (%s); make sure it persists "
                    "(appendonly yes) and never evicts (maxmemory-policy noeviction)", shown, found.unknown)
    elif found.problems:
        _refuse(settings, f"{shown} would lose work already checkpointed: {'; '.join(found.problems)}")


def _refuse(settings: Settings, why: str) -> None:
    if settings.allow_volatile_broker:
        log.warning("volatile broker allowed by %s: %s", ALLOW_SETTING, why)
        return
    raise ConfigError(
        f"bad setting FEEDPIPE_BROKER_URL: {why}; use a durable broker (see README, Broker) "
        f"or set {ALLOW_SETTING}=true for demos and tests"
    )
