"""Redis clients: one Redis or a Redis Cluster, in plain TCP or TLS, and the few calls that
differ between the two.

On a cluster every command must name keys of one slot. feedpipe's Lua scripts touch one key
each; the regeneration queue's own keys share ``feed_regen_queue``'s slot through a hash tag;
pipelines are never transactions, so redis-py splits them per node. What remains is here:

- SCAN walks one node's keyspace, so a sweep walks every primary in turn (``scan_page``);
- redis-py's cluster pipeline refuses ``evalsha`` because it cannot load scripts; ``eval_many``
  sends EVALSHA itself and loads a script on every primary when a node answers NOSCRIPT.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisClusterException
from redis.retry import Retry

from feedpipe.config import (
    CLUSTER_NEEDS_BROKER,
    WRITE_BUDGET_NEEDS_PLAIN_REDIS,
    ConfigError,
    RedisClusterMode,
    Settings,
    TlsCertReqs,
    redact_url,
)
from feedpipe.core.keys import WALK_START

log = logging.getLogger(__name__)

RedisClient: TypeAlias = redis.Redis | RedisCluster

SCAN_START = WALK_START  # starts a walk, and is what the last page of a walk returns
_CERT_REQS = {
    TlsCertReqs.REQUIRED: ssl.CERT_REQUIRED,
    TlsCertReqs.OPTIONAL: ssl.CERT_OPTIONAL,
    TlsCertReqs.NONE: ssl.CERT_NONE,
}


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3)


def _timeouts() -> dict[str, Any]:
    return {"socket_timeout": 10, "socket_connect_timeout": 5, "health_check_interval": 30}


def tls_options(settings: Settings | None) -> dict[str, Any]:
    """redis-py's ``ssl_*`` arguments for a ``rediss://`` connection (kombu passes the same
    ones through as Celery's ``broker_use_ssl``)."""
    reqs = settings.redis_tls_cert_reqs if settings else TlsCertReqs.REQUIRED
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[reqs], "ssl_check_hostname": reqs is TlsCertReqs.REQUIRED}
    if settings and settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings and settings.redis_tls_cert_file and settings.redis_tls_key_file:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return options


def _connection_options(url: str, settings: Settings | None) -> dict[str, Any]:
    return {**_timeouts(), **(tls_options(settings) if urlsplit(url).scheme == "rediss" else {})}


def connect_redis(target: str | Settings) -> RedisClient:
    """A client for the app's Redis that retries dropped connections a few times before failing
    the call. Given a URL alone, a cluster is detected and the system's CAs are trusted; given
    the settings, their cluster mode and TLS files apply, and a cluster with no broker of its
    own is refused (ConfigError): Celery has no Redis Cluster transport."""
    settings = target if isinstance(target, Settings) else None
    url = settings.redis if settings else str(target)
    options = _connection_options(url, settings)
    mode = settings.redis_cluster if settings else RedisClusterMode.AUTO
    if mode is RedisClusterMode.OFF or (mode is RedisClusterMode.AUTO and not is_cluster_node(url, options)):
        return redis.Redis.from_url(
            url, retry=_retry(), retry_on_error=[redis.ConnectionError, redis.TimeoutError], **options
        )
    if settings is not None and settings.broker_url is None:
        raise ConfigError(f"bad configuration: {CLUSTER_NEEDS_BROKER}")
    try:
        return RedisCluster.from_url(url, retry=_retry(), **options)
    except RedisClusterException as exc:
        if "db" in str(exc):
            raise ConfigError("bad setting FEEDPIPE_REDIS_URL: a Redis Cluster has only database 0") from None
        raise


def is_cluster_node(url: str, options: dict[str, Any]) -> bool:
    """Whether the server at ``url`` runs in cluster mode (``INFO cluster``); one round trip."""
    if urlsplit(url).scheme == "unix":
        return False
    probe = redis.Redis.from_url(url, retry=_retry(), retry_on_error=[redis.ConnectionError], **options)
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    except redis.ResponseError as exc:
        if "cluster mode" in str(exc):  # "SELECT is not allowed in cluster mode": a /N in the URL
            return True
        raise
    finally:
        probe.close()


def scan_page(
    client: RedisClient, cursor: str, match: str, count: int, key_type: str | None = None
) -> tuple[str, list[bytes]]:
    """One SCAN call: the next cursor and the keys found. Pass ``SCAN_START`` first; the walk is
    over when ``SCAN_START`` comes back. On a cluster SCAN sees one node's keys, so the cursor
    also names the primary (``"{index}:{cursor}"``, primaries in name order) and the walk goes
    through every primary in turn: its cost is the sum of one walk per primary."""
    if not isinstance(client, RedisCluster):
        reply: tuple[int, list[bytes]] = client.scan(  # type: ignore[assignment]
            int(cursor), match=match, count=count, _type=key_type
        )
        return str(reply[0]), list(reply[1])
    return _scan_cluster(client, cursor, match, count, key_type)


def _scan_cluster(
    client: RedisCluster, cursor: str, match: str, count: int, key_type: str | None
) -> tuple[str, list[bytes]]:
    primaries: list[Any] = sorted(client.get_primaries(), key=lambda node: str(node.name))  # type: ignore[no-untyped-call]
    index, _, node_cursor = cursor.partition(":")
    if not node_cursor or int(index) >= len(primaries):
        index, node_cursor = "0", "0"  # a new walk, or a cursor from before the cluster changed: restart
    at = int(index)
    node = primaries[at]
    reply: Any = client.scan(int(node_cursor), match=match, count=count, _type=key_type, target_nodes=node)
    cursors, found = reply
    following = int(cursors[node.name])
    if following:
        return f"{at}:{following}", list(found)
    return (f"{at + 1}:0" if at + 1 < len(primaries) else SCAN_START), list(found)


ScriptKeys = str | Sequence[str]  # one key, or several in one cluster slot


def eval_many(client: RedisClient, script: Script, calls: Sequence[tuple[ScriptKeys, Sequence[Any]]]) -> list[Any]:
    """Run ``script`` once per ``(keys, args)``, all in one non-transactional
    pipeline (one round trip per node). A NOSCRIPT reply (a node that never saw the script, or
    restarted since) loads it on every primary and reruns just those calls."""
    results = _evalsha_pipeline(client, script.sha, calls)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        client.script_load(script.script)
        retried = _evalsha_pipeline(client, script.sha, [calls[i] for i in missing])
        for i, result in zip(missing, retried, strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def _evalsha_pipeline(client: RedisClient, sha: str, calls: Sequence[tuple[ScriptKeys, Sequence[Any]]]) -> list[Any]:
    if not calls:
        return []
    pipe = client.pipeline(transaction=False)
    for names, args in calls:
        listed = [names] if isinstance(names, str) else list(names)
        pipe.execute_command("EVALSHA", sha, len(listed), *listed, *args)
    return list(pipe.execute(raise_on_error=False))


# -- at start: credentials and certificates are settings, so a wrong one is one clear line --------

_BROKER_SCHEMES = {"redis": "redis", "rediss": "rediss", "redis+socket": "unix"}
_LOGIN_REFUSED = ("WRONGPASS", "NOAUTH", "invalid username-password", "Authentication required", "AUTH")
_TLS_FAILED = ("ssl", "certificate", "tls")  # matched ignoring case: "_ssl.c", "[SSL: …]"


def check_redis(settings: Settings, broker: bool = False) -> Settings:
    """Log in once to the app's Redis, and to the broker when ``broker`` and it is a Redis.
    Returns the settings with an ``auto`` cluster mode resolved to ``on`` or ``off``: a process
    installs them at start, so its prefork children never need to ask.

    A refused login or a failed TLS handshake raises ConfigError with one line naming the
    setting (the URL redacted); so does a broker that is a cluster node, and a Redis that cannot
    be asked whether it is a cluster. Otherwise an unreachable server is only logged."""
    targets = [("FEEDPIPE_REDIS_URL", settings.redis)]
    scheme = urlsplit(settings.broker).scheme
    if broker and settings.broker_url is not None and scheme in _BROKER_SCHEMES:
        targets.append(("FEEDPIPE_BROKER_URL", settings.broker))
    for name, url in targets:
        try:
            settings = _log_in(name, url, settings)
        except ConfigError:
            raise
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            _explain(name, url, settings, _reason(exc))
    if settings.write_budget_wcu and settings.redis_cluster is RedisClusterMode.ON:  # ``auto`` found a cluster
        raise ConfigError(WRITE_BUDGET_NEEDS_PLAIN_REDIS)
    if broker:
        check_durable_broker(settings)
    return settings


def check_durable_broker(settings: Settings) -> None:
    """The broker must keep checkpointed work through a restart (``adapters/durability.py``)."""
    from feedpipe.adapters.durability import check_broker

    client = connect_broker(settings)
    try:
        check_broker(settings, client)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        log.warning("cannot check that the broker %s is durable yet (%s); carrying on",
                    redact_url(settings.broker), _reason(exc))
    finally:
        if client is not None:
            client.close()


def _explain(name: str, url: str, settings: Settings, reason: str) -> None:
    shown = redact_url(url)
    if any(word in reason for word in _LOGIN_REFUSED):
        raise ConfigError(f"bad setting {name}: {shown} refused the login ({reason}); "
                          "check the user and password in the URL")
    if any(word in reason.lower() for word in _TLS_FAILED):
        raise ConfigError(f"bad setting {name}: TLS with {shown} failed ({reason}); check FEEDPIPE_REDIS_TLS_CA_FILE "
                          "(the CA that signed the server's certificate) and the other FEEDPIPE_REDIS_TLS_* settings")
    if name == "FEEDPIPE_REDIS_URL" and settings.redis_cluster is RedisClusterMode.AUTO:
        raise ConfigError(f"cannot reach FEEDPIPE_REDIS_URL {shown} to ask whether it is a Redis Cluster ({reason}); "
                          "start again once it answers, or set FEEDPIPE_REDIS_CLUSTER=on or off")
    log.warning("%s %s is not reachable yet (%s); carrying on, calls will retry", name, shown, reason)


def connect_broker(settings: Settings) -> redis.Redis | None:
    """A plain client of the Celery broker when it is a Redis (for queue depths), else None."""
    scheme = urlsplit(settings.broker).scheme
    if scheme not in _BROKER_SCHEMES:
        return None
    url = _BROKER_SCHEMES[scheme] + settings.broker[len(scheme) :]
    return redis.Redis.from_url(url, retry=_retry(), **_connection_options(url, settings))


def _log_in(name: str, url: str, settings: Settings) -> Settings:
    if name == "FEEDPIPE_REDIS_URL":
        client: RedisClient | None = connect_redis(settings)
        mode = RedisClusterMode.ON if isinstance(client, RedisCluster) else RedisClusterMode.OFF
        settings = settings.model_copy(update={"redis_cluster": mode})
    else:
        client = connect_broker(settings)
        if client is not None and client.info("cluster").get("cluster_enabled"):
            raise ConfigError(f"bad setting {name}: {redact_url(url)} is a Redis Cluster node; Celery needs a "
                              "plain Redis or AMQP broker")
    if client is not None:
        try:
            client.ping()
        finally:
            client.close()
    return settings


def _reason(exc: BaseException) -> str:
    """The error's own words, on one line (redis-py wraps TLS and cluster start-up errors)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
