"""The one settings object, read from ``FEEDPIPE_*`` environment variables once at start.

AWS settings are boto3's own (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, the credentials
chain) and are not repeated here. ``load_settings`` turns any bad value into ``ConfigError``
whose message is one line naming the variable; secrets never appear in ``repr`` or logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from feedpipe.core.keys import DEFAULT_PREFIX
from feedpipe.core.members import MemberFormat

ENV_PREFIX = "FEEDPIPE_"
# Tasks retry, back off and hand their work on within a quarter of the visibility timeout (the
# task budget); under 4 s that quarter would be shorter than the first retry's 1 s backoff.
MIN_VISIBILITY_TIMEOUT_SECONDS = 4


class ConfigError(Exception):
    """A setting that is missing or wrong; the message is one line for the operator."""


class Source(StrEnum):
    DYNAMODB_STREAMS = "dynamodb-streams"
    KINESIS = "kinesis"


class InitialPosition(StrEnum):
    """Where a first start reads a shard that has no checkpoint (KCL's initial position)."""

    TRIM_HORIZON = "TRIM_HORIZON"
    LATEST = "LATEST"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


WRITE_BUDGET_NEEDS_PLAIN_REDIS = "FEEDPIPE_WRITE_BUDGET_WCU needs a plain Redis (not a Redis Cluster) for now"


class RedisClusterMode(StrEnum):
    """``auto`` asks the node at start (``INFO cluster``); ``on``/``off`` skip the question."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class TlsCertReqs(StrEnum):
    """Whether a ``rediss://`` server's certificate must verify (``required`` also checks the host)."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    NONE = "none"


CLUSTER_NEEDS_BROKER = (
    "FEEDPIPE_REDIS_URL is a Redis Cluster, which Celery cannot use as its broker: "
    "set FEEDPIPE_BROKER_URL to a plain Redis or AMQP URL"
)


# Each long-running role's /metrics port when FEEDPIPE_METRICS_PORT is not set.
DEFAULT_METRICS_PORTS = {"consume": 9464, "worker": 9465, "beat": 9466}

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
BROKER_SCHEMES = REDIS_SCHEMES | {"redis+socket", "amqp", "amqps", "pyamqp", "memory"}
_LOCAL_SCHEMES = frozenset({"unix", "redis+socket", "memory"})
_SECRET_PARAMS = frozenset({"password", "pass", "passwd"})


def redact_url(url: str) -> str:
    """A URL fit for logs: any password (userinfo or query parameter) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    if parts.query:
        pairs = [p.partition("=") for p in parts.query.split("&")]
        parts = parts._replace(query="&".join(
            f"{k}{eq}{'***' if k.lower() in _SECRET_PARAMS else v}" for k, eq, v in pairs
        ))
    return urlunsplit(parts)


def _check_url(url: str, schemes: frozenset[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"must be a URL with a scheme of {', '.join(sorted(schemes))}")
    if parts.scheme not in _LOCAL_SCHEMES and not parts.hostname:
        raise ValueError("must name a host, as in redis://host:6379/0")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", case_sensitive=False
    )

    # Where things live.
    table_name: str = Field("SocialMediaApp", min_length=3, max_length=255)
    lease_table_name: str = Field("feedpipe-leases", min_length=3, max_length=255)
    dead_letter_table_name: str = Field("feedpipe-dead-letters", min_length=3, max_length=255)
    # Well under DynamoDB's 400 KB item limit, room left for the letter's other attributes.
    dead_letter_max_bytes: int = Field(65_536, ge=1024, le=350_000)
    dead_letter_max_count: int = Field(100_000, ge=1)
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    broker_url: SecretStr | None = None
    allow_volatile_broker: bool = False  # demos and tests only: see adapters/durability.py
    source: Source = Source.DYNAMODB_STREAMS
    kinesis_stream: str | None = None
    key_prefix: str = Field(DEFAULT_PREFIX, min_length=1, max_length=64, pattern=r"^[^{}\s]+$")

    # Redis Cluster, TLS (for every rediss:// connection: the app's Redis and a Redis broker).
    redis_cluster: RedisClusterMode = RedisClusterMode.AUTO
    redis_tls_ca_file: FilePath | None = None
    redis_tls_cert_file: FilePath | None = None
    redis_tls_key_file: FilePath | None = None
    redis_tls_cert_reqs: TlsCertReqs = TlsCertReqs.REQUIRED

    # Feed rules (contract section 3).
    feed_max_length: int = Field(100, ge=1, le=10_000)
    feed_ttl_seconds: int = Field(3600, ge=1)
    backfill_posts: int = Field(20, ge=0, le=1000)
    excluded_visibilities: Annotated[frozenset[str], NoDecode] = frozenset({"private"})
    member_format: MemberFormat = MemberFormat.FULL
    durable_feed_ttl_days: int = Field(0, ge=0, description="0 keeps feed items forever")
    fanout_on_read_followers: int = Field(0, ge=0, description="0 turns fan-out-on-read off")
    author_posts_ttl_seconds: int = Field(86_400, ge=1)

    # Fan-out and consumer tuning.
    fanout_chunk_size: int = Field(1000, ge=1, le=100_000)
    follower_page_size: int = Field(10_000, ge=1, le=100_000)
    fanout_max_walkers: int = Field(
        16, ge=1, le=1024, description="planner tasks that walk one post's followers at once (1: one walk)",
    )
    follower_read_rcu: int = Field(
        2400, ge=0, le=1_000_000,
        description="RCU per second all walkers of one author's followers read from its GSI1 partition together "
                    "(0: unpaced)",
    )
    write_concurrency: int = Field(4, ge=1, le=64)
    write_budget_wcu: int = Field(
        0, ge=0, description="WCU per second all workers together write to the app's table (0: no budget)",
    )
    records_per_read: int = Field(1000, ge=1, le=10_000)
    shard_read_concurrency: int = Field(
        16, ge=1, le=256, description="GetRecords calls a consumer has in flight at once, each on its own shard",
    )
    events_per_message: int = Field(200, ge=1, le=5000)
    idle_poll_seconds: float = Field(1.0, gt=0, le=60)
    task_visibility_timeout_seconds: int = Field(600, ge=1)
    lease_failover_seconds: float = Field(10.0, ge=1, le=600)
    task_max_retries: int = Field(20, ge=0)
    gsi_lag_seconds: float = Field(
        2.0, ge=0, le=60,
        description="bound on GSI1's replication lag: each follow is checked again after twice it (0: never); "
        "each unfollow after twice it plus a task budget, whatever it is",
    )

    # Regeneration, trimming and the schedule (``feedpipe beat``).
    regen_actions: Annotated[frozenset[str], NoDecode] = frozenset(
        {"follow", "unfollow", "rebuild", "regenerate"}
    )
    regen_batch: int = Field(5000, ge=1, le=100_000)
    regen_users_per_task: int = Field(20, ge=1, le=10_000)
    regen_lease_seconds: int = Field(60, ge=1)
    regen_drain_every_seconds: float = Field(2.0, gt=0)
    trim_caches_every_seconds: float = Field(300.0, gt=0)
    durable_feed_max_items: int = Field(1000, ge=0, description="0 keeps every durable item")
    trim_durable_every_seconds: float = Field(3600.0, gt=0)
    rebuild_active_every_seconds: float = Field(3600.0, gt=0)
    beat_lock_seconds: int = Field(30, ge=3)
    audit_sample_per_minute: int = Field(0, ge=0, le=10_000, description="0 turns the sampled audit off")
    audit_repair: bool = True

    # First deploy on an existing table.
    initial_position: InitialPosition = InitialPosition.TRIM_HORIZON

    # Processes.
    metrics_port: int | None = Field(None, ge=0, le=65535, description="None: each role's own default")
    metrics_addr: str = "127.0.0.1"
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    task_events: bool = False  # workers send task events, for Flower

    @field_validator("excluded_visibilities", "regen_actions", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr) -> SecretStr:
        _check_url(value.get_secret_value(), REDIS_SCHEMES)
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_url(value.get_secret_value(), BROKER_SCHEMES)
        return value

    @field_validator("task_visibility_timeout_seconds")
    @classmethod
    def _check_visibility(cls, value: int) -> int:
        if value < MIN_VISIBILITY_TIMEOUT_SECONDS:
            raise ValueError(
                f"must be at least {MIN_VISIBILITY_TIMEOUT_SECONDS} (seconds): tasks retry and hand their work "
                "on within a quarter of it, and a retry waits at least 1 s"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @model_validator(mode="after")
    def _check_redis(self) -> Settings:
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError("FEEDPIPE_REDIS_TLS_CERT_FILE and FEEDPIPE_REDIS_TLS_KEY_FILE go together: set both")
        files = (self.redis_tls_ca_file, self.redis_tls_cert_file)
        if any(files) and not any(urlsplit(u).scheme == "rediss" for u in (self.redis, self.broker)):
            raise ValueError("FEEDPIPE_REDIS_TLS_* files are set but no URL is rediss://")
        if self.redis_cluster is RedisClusterMode.ON:
            if urlsplit(self.redis).scheme == "unix":
                raise ValueError("a Redis Cluster is reached over TCP: FEEDPIPE_REDIS_URL must be redis:// or rediss://")
            if self.broker_url is None:
                raise ValueError(CLUSTER_NEEDS_BROKER)
            if self.write_budget_wcu:
                raise ValueError(WRITE_BUDGET_NEEDS_PLAIN_REDIS)
        return self

    @model_validator(mode="after")
    def _check_source(self) -> Settings:
        if self.source is Source.KINESIS and not self.kinesis_stream:
            raise ValueError("FEEDPIPE_KINESIS_STREAM is required when FEEDPIPE_SOURCE=kinesis")
        return self

    @property
    def redis(self) -> str:
        return self.redis_url.get_secret_value()

    @property
    def broker(self) -> str:
        """The broker URL as Celery reads it: kombu names a Redis over a unix socket
        ``redis+socket://``, where redis-py says ``unix://``."""
        url = (self.broker_url or self.redis_url).get_secret_value()
        return "redis+socket" + url[len("unix"):] if url.startswith("unix://") else url

    def metrics_port_for(self, role: str) -> int:
        """Where a process of this role serves ``/metrics``: the setting, else the role's own
        default, so a consumer, a worker and beat run side by side on one host unconfigured."""
        return self.metrics_port if self.metrics_port is not None else DEFAULT_METRICS_PORTS[role]

    @property
    def task_budget_seconds(self) -> float:
        """How long a task works before handing the rest of its work to a fresh message: well
        inside the visibility timeout, after which a Redis broker delivers a message again. Retry
        countdowns and backoffs are bounded by it too: a Redis worker holds a message unacknowledged
        while its countdown runs. At least 1 s (the visibility timeout's minimum is 4 s)."""
        return self.task_visibility_timeout_seconds / 4

    def describe(self) -> dict[str, Any]:
        """Every setting with secrets redacted, for start-up logs and ``feedpipe status``."""
        shown = self.model_dump(mode="json", exclude={"redis_url", "broker_url"})
        shown["redis_url"] = redact_url(self.redis)
        shown["broker_url"] = redact_url(self.broker)
        return shown


class _MappingSettings(Settings):
    """Settings from a given mapping only: the process environment is not consulted."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *_: Any, **__: Any):  # type: ignore[no-untyped-def]
        return (init_settings,)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the process environment (or only from ``environ``), validated;
    ConfigError with a one-line message on any bad value."""
    try:
        if environ is None:
            return Settings(**overrides)
        wanted = {k[len(ENV_PREFIX) :].lower(): v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
        return _MappingSettings(**{**wanted, **overrides})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(p) for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if not field:
        return f"bad configuration: {message}"
    name = f"{ENV_PREFIX}{field.upper()}"
    if "redis_url" not in field and "broker_url" not in field:
        value = error.get("input")
        if isinstance(value, str | int | float):
            return f"bad setting {name}={value!r}: {message}"
    return f"bad setting {name}: {message}"
