"""Redis Cluster and TLS settings: each mistake is one line naming the setting, the TLS files
reach the app's Redis and a rediss:// broker alike, and secrets stay out of every rendering."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from feedpipe.adapters.celery_app import celery_config
from feedpipe.adapters.redis_client import check_redis, tls_options
from feedpipe.config import CLUSTER_NEEDS_BROKER, ConfigError, RedisClusterMode, load_settings
from feedpipe.dev.local import free_port

SECRET = "hunter2-never-shown"


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("-----BEGIN CERTIFICATE-----\n")
    return {
        "FEEDPIPE_REDIS_TLS_CA_FILE": str(files["ca"]),
        "FEEDPIPE_REDIS_TLS_CERT_FILE": str(files["cert"]),
        "FEEDPIPE_REDIS_TLS_KEY_FILE": str(files["key"]),
    }


def error_of(**env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return str(caught.value)


def test_cluster_and_tls_mistakes_are_one_line_each(pem: dict[str, str]) -> None:
    tls_url = {"FEEDPIPE_REDIS_URL": "rediss://cache:6380/0"}
    assert error_of(FEEDPIPE_REDIS_CLUSTER="on") == f"bad configuration: {CLUSTER_NEEDS_BROKER}"
    over_unix = error_of(FEEDPIPE_REDIS_CLUSTER="on", FEEDPIPE_REDIS_URL="unix:///tmp/r.sock",
                         FEEDPIPE_BROKER_URL="amqp://mq//")
    assert over_unix.startswith("bad configuration: a Redis Cluster is reached over TCP")
    assert error_of(FEEDPIPE_REDIS_CLUSTER="maybe").startswith("bad setting FEEDPIPE_REDIS_CLUSTER='maybe'")
    assert error_of(FEEDPIPE_REDIS_TLS_CERT_REQS="always", **tls_url).startswith(
        "bad setting FEEDPIPE_REDIS_TLS_CERT_REQS='always'")
    only_cert = {k: v for k, v in pem.items() if not k.endswith("KEY_FILE")}
    assert error_of(**only_cert, **tls_url) == (
        "bad configuration: FEEDPIPE_REDIS_TLS_CERT_FILE and FEEDPIPE_REDIS_TLS_KEY_FILE go together: set both")
    assert error_of(**pem) == "bad configuration: FEEDPIPE_REDIS_TLS_* files are set but no URL is rediss://"
    assert error_of(FEEDPIPE_REDIS_TLS_CA_FILE="/nowhere.pem", **tls_url).startswith(
        "bad setting FEEDPIPE_REDIS_TLS_CA_FILE='/nowhere.pem': Path does not point to a file")
    for line in (error_of(FEEDPIPE_REDIS_CLUSTER="on"), error_of(**pem)):
        assert "\n" not in line


def test_the_tls_files_reach_the_redis_client_and_the_celery_broker(pem: dict[str, str]) -> None:
    settings = load_settings({"FEEDPIPE_REDIS_URL": "rediss://cache:6380/0", **pem})
    expected = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True,
        "ssl_ca_certs": pem["FEEDPIPE_REDIS_TLS_CA_FILE"],
        "ssl_certfile": pem["FEEDPIPE_REDIS_TLS_CERT_FILE"], "ssl_keyfile": pem["FEEDPIPE_REDIS_TLS_KEY_FILE"],
    }
    assert tls_options(settings) == expected
    assert celery_config(settings)["broker_use_ssl"] == expected  # the broker defaults to the same Redis

    plain_broker = settings.model_copy(update={"broker_url": load_settings(
        {"FEEDPIPE_BROKER_URL": "redis://mq:6379/0"}).broker_url})
    assert "broker_use_ssl" not in celery_config(plain_broker)
    lax = load_settings({"FEEDPIPE_REDIS_URL": "rediss://cache:6380/0", "FEEDPIPE_REDIS_TLS_CERT_REQS": "none"})
    assert tls_options(lax) == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_check_hostname": False}


def test_passwords_in_redis_and_broker_urls_never_render(pem: dict[str, str]) -> None:
    settings = load_settings({
        "FEEDPIPE_REDIS_URL": f"rediss://feedpipe:{SECRET}@cache:6380/0",
        "FEEDPIPE_BROKER_URL": f"rediss://mq:6380/0?password={SECRET}",
        **pem,
    })
    shown = settings.describe()
    assert shown["redis_url"] == "rediss://feedpipe:***@cache:6380/0"
    assert shown["broker_url"] == "rediss://mq:6380/0?password=***"
    for text in (repr(settings), str(settings), str(shown)):
        assert SECRET not in text
    bad = error_of(FEEDPIPE_REDIS_URL=f"ftp://feedpipe:{SECRET}@cache/0")
    assert SECRET not in bad and bad.startswith("bad setting FEEDPIPE_REDIS_URL:")


def test_a_plain_redis_resolves_auto_to_off_and_an_unreachable_one_must_be_named(
    redis_urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    assert check_redis(load_settings({"FEEDPIPE_REDIS_URL": redis_urls[0]})).redis_cluster is RedisClusterMode.OFF
    nowhere = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError) as caught:
        check_redis(load_settings({"FEEDPIPE_REDIS_URL": nowhere}))
    assert str(caught.value).startswith("cannot reach FEEDPIPE_REDIS_URL redis://:***@127.0.0.1:")
    assert str(caught.value).endswith("or set FEEDPIPE_REDIS_CLUSTER=on or off")
    told = check_redis(load_settings({"FEEDPIPE_REDIS_URL": nowhere, "FEEDPIPE_REDIS_CLUSTER": "off"}))
    assert told.redis_cluster is RedisClusterMode.OFF  # told, not asked: it starts and retries later
    assert "is not reachable yet" in caplog.text and SECRET not in caplog.text + str(caught.value)
