"""``load_settings``: defaults, one-line errors naming the variable, secrets kept out of sight."""

from __future__ import annotations

import json

import pytest

from feedpipe.config import ConfigError, Source, load_settings
from feedpipe.core.members import MemberFormat

SECRET = "s3cr3t-Pa55"


def test_defaults_follow_the_contract():
    settings = load_settings({})

    assert settings.table_name == "SocialMediaApp"
    assert settings.redis == "redis://127.0.0.1:6379/0"
    assert settings.broker == settings.redis  # the broker defaults to the Redis URL
    assert settings.source is Source.DYNAMODB_STREAMS
    assert settings.kinesis_stream is None
    assert settings.key_prefix == "feedpipe:"
    assert settings.feed_max_length == 100
    assert settings.feed_ttl_seconds == 3600
    assert settings.backfill_posts == 20
    assert settings.excluded_visibilities == frozenset({"private"})
    assert settings.member_format is MemberFormat.FULL
    assert settings.shard_read_concurrency == 16
    assert settings.metrics_port is None
    # Each role has its own port, so consume, worker and beat run side by side on one host.
    ports = [settings.metrics_port_for(role) for role in ("consume", "worker", "beat")]
    assert ports == [9464, 9465, 9466]


def test_values_come_from_feedpipe_variables():
    settings = load_settings(
        {
            "FEEDPIPE_TABLE_NAME": "Social-Staging",
            "FEEDPIPE_REDIS_URL": "redis://cache:6380/2",
            "FEEDPIPE_BROKER_URL": "redis://broker:6379/1",
            "FEEDPIPE_SOURCE": "kinesis",
            "FEEDPIPE_KINESIS_STREAM": "social-changes",
            "FEEDPIPE_FEED_MAX_LENGTH": "250",
            "FEEDPIPE_EXCLUDED_VISIBILITIES": "private, friends",
            "FEEDPIPE_METRICS_PORT": "9100",
            "UNRELATED": "ignored",
        }
    )

    assert settings.table_name == "Social-Staging"
    assert settings.redis == "redis://cache:6380/2"
    assert settings.broker == "redis://broker:6379/1"
    assert settings.source is Source.KINESIS
    assert settings.kinesis_stream == "social-changes"
    assert settings.feed_max_length == 250
    assert settings.excluded_visibilities == frozenset({"private", "friends"})
    assert settings.metrics_port == 9100
    assert settings.metrics_port_for("worker") == 9100


def test_a_given_mapping_is_the_only_source(monkeypatch):
    monkeypatch.setenv("FEEDPIPE_TABLE_NAME", "FromTheShell")

    assert load_settings({}).table_name == "SocialMediaApp"


def test_without_a_mapping_the_process_environment_is_read(monkeypatch):
    monkeypatch.setenv("FEEDPIPE_TABLE_NAME", "FromTheShell")

    assert load_settings().table_name == "FromTheShell"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FEEDPIPE_FEED_MAX_LENGTH", "lots"),  # not an int
        ("FEEDPIPE_FEED_MAX_LENGTH", "0"),  # out of range
        ("FEEDPIPE_SHARD_READ_CONCURRENCY", "0"),
        ("FEEDPIPE_METRICS_PORT", "http"),
        ("FEEDPIPE_SOURCE", "sqs"),  # not one of the enum's values
        ("FEEDPIPE_MEMBER_FORMAT", "xml"),
        ("FEEDPIPE_REDIS_URL", "not a url"),
        ("FEEDPIPE_REDIS_URL", "127.0.0.1:6379"),
        ("FEEDPIPE_BROKER_URL", "broker/0"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value})

    message = str(caught.value)
    assert variable in message
    assert "\n" not in message


def test_kinesis_without_a_stream_names_the_missing_variable():
    with pytest.raises(ConfigError) as caught:
        load_settings({"FEEDPIPE_SOURCE": "kinesis"})

    message = str(caught.value)
    assert "FEEDPIPE_KINESIS_STREAM" in message
    assert "\n" not in message


@pytest.mark.parametrize("value", ["1", "3"])
def test_a_visibility_timeout_shorter_than_retries_need_is_refused_in_one_line(value):
    with pytest.raises(ConfigError) as refused:
        load_settings({"FEEDPIPE_TASK_VISIBILITY_TIMEOUT_SECONDS": value})

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"bad setting FEEDPIPE_TASK_VISIBILITY_TIMEOUT_SECONDS='{value}': must be at least 4")


def test_the_shortest_visibility_timeout_leaves_a_budget_of_a_quarter():
    assert load_settings({"FEEDPIPE_TASK_VISIBILITY_TIMEOUT_SECONDS": "4"}).task_budget_seconds == 1.0
    assert load_settings({}).task_budget_seconds == 150.0


@pytest.mark.parametrize("value", ["localhost:6379", "redis:6379", "redis:///0", "http://cache:6379"])
def test_a_redis_url_without_scheme_and_host_is_refused(value):
    with pytest.raises(ConfigError, match="FEEDPIPE_REDIS_URL"):
        load_settings({"FEEDPIPE_REDIS_URL": value})


def test_a_refused_redis_url_is_not_echoed():
    with pytest.raises(ConfigError) as caught:
        load_settings({"FEEDPIPE_REDIS_URL": f"{SECRET}@cache.internal:6379"})

    assert SECRET not in str(caught.value)


def _everything_shown(settings) -> str:
    return "\n".join([repr(settings), str(settings), json.dumps(settings.describe())])


@pytest.mark.parametrize(
    "environ",
    [
        {"FEEDPIPE_REDIS_URL": f"redis://:{SECRET}@cache.internal:6379/0"},
        {"FEEDPIPE_REDIS_URL": f"redis://feedpipe:{SECRET}@cache.internal:6379/0"},
        {"FEEDPIPE_REDIS_URL": f"rediss://default:{SECRET}@cache.internal:6380/0"},
        {
            "FEEDPIPE_REDIS_URL": "redis://cache.internal:6379/0",
            "FEEDPIPE_BROKER_URL": f"amqp://feedpipe:{SECRET}@rabbit.internal:5672//",
        },
        pytest.param(
            {"FEEDPIPE_REDIS_URL": f"redis://cache.internal:6379/0?password={SECRET}"},
            id="password-in-query",
        ),
    ],
)
def test_secrets_never_show(environ):
    settings = load_settings(environ)

    shown = _everything_shown(settings)

    assert SECRET not in shown
    assert "cache.internal" in json.dumps(settings.describe())  # the host is still useful


def test_describe_keeps_the_url_usable_for_an_operator():
    settings = load_settings({"FEEDPIPE_REDIS_URL": f"redis://feedpipe:{SECRET}@cache.internal:6379/0"})

    described = settings.describe()

    assert described["redis_url"] == "redis://feedpipe:***@cache.internal:6379/0"
    assert described["broker_url"] == "redis://feedpipe:***@cache.internal:6379/0"
    assert settings.redis.endswith(f"{SECRET}@cache.internal:6379/0")  # the client still gets it


def test_up_gives_each_of_its_processes_a_port_of_its_own():
    from feedpipe.dev.up import _metrics_ports

    names = ["worker", "consumer", "beat"]
    assert _metrics_ports(load_settings({}), names) == {"worker": 9465, "consumer": 9464, "beat": 9466}
    assert _metrics_ports(load_settings({"FEEDPIPE_METRICS_PORT": "9100"}), names) == {
        "worker": 9100, "consumer": 9101, "beat": 9102}
    assert set(_metrics_ports(load_settings({"FEEDPIPE_METRICS_PORT": "0"}), names).values()) == {0}


def test_a_unix_socket_redis_is_a_broker_celery_can_reach():
    assert load_settings({"FEEDPIPE_REDIS_URL": "unix:///run/redis.sock?db=2"}).broker == "redis+socket:///run/redis.sock?db=2"
    assert load_settings({"FEEDPIPE_BROKER_URL": "unix:///run/b.sock"}).broker == "redis+socket:///run/b.sock"
    assert load_settings({"FEEDPIPE_BROKER_URL": "redis://b:6379/1"}).broker == "redis://b:6379/1"
