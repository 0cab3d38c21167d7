"""The configuration tree: one TOML file plus ``HERALD_*`` environment overrides.

Read only by entrypoints and the bootstrap. ``HERALD_DATABASE__URL`` overrides
``[database] url``; ``__`` separates nesting levels.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from herald.config_source import DEFAULT_DATABASE_URL, ConfigSource, read_source
from herald.domain.errors import ConfigurationError, ValidationError
from herald.domain.models import ALL_CHANNELS, Priority
from herald.domain.rates import RateLimit
from herald.domain.rules import parse_rule


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


ALL_LANES = (Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW)


def check_lanes(value: list[Priority]) -> list[Priority]:
    """Lanes a sender serves: at least one, each once, adjacent (claims take a range of ranks)."""
    ranks = sorted({p.rank for p in value})
    if not ranks:
        raise ValueError("needs at least one lane")
    if len(ranks) != len(value):
        raise ValueError("names a lane twice")
    if ranks[-1] - ranks[0] != len(ranks) - 1:
        raise ValueError("lanes must be adjacent, e.g. ['normal', 'low'] or ['critical', 'high']")
    return sorted(value, key=lambda p: p.rank)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8025, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    public_url: str = "http://127.0.0.1:8025"
    # `herald serve`: send in this many supervised `herald worker` children (every channel but
    # in_app); 0 sends in the serve process itself. One process uses about one core. Unset:
    # picked from the cores this process may run on (Settings.serve_worker_processes).
    worker_processes: int | None = Field(default=None, ge=0, le=32)
    # The priority lanes the children send; this process sends the others of the same channels
    # itself, so that critical mail does not share a busy bulk sender's event loop and CPU.
    worker_lanes: list[Priority] = Field(default_factory=lambda: list(ALL_LANES))
    # CPU priority (nice, 0-19) of the children: bulk senders yield the cores to this process.
    # Unset: 10 on PostgreSQL, 0 on SQLite (Settings.children_nice says why).
    worker_nice: int | None = Field(default=None, ge=0, le=19)
    # Lanes this process sends as well, beside the children: what it routes into them is written
    # claimed by its own senders and sent at once, without a claim or the children's busy loops;
    # what they cannot take at once either side claims. [] leaves them to the children alone.
    serve_lanes: list[Priority] = Field(default_factory=lambda: [Priority.CRITICAL])
    # Browser origins (scheme://host[:port]) allowed to call the end-user endpoints (inbox,
    # stream, preferences, user-token calls); API-key endpoints never answer a browser origin.
    cors_origins: list[str] = Field(default_factory=list)
    # Live inbox streams (issue 19): at most this many open at once per user, and a heartbeat
    # (an SSE comment, and a look at the feed) every this many seconds.
    streams_per_user: int = Field(default=8, ge=1, le=1000)
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for origin in value:
            o = origin.strip().rstrip("/")
            if o != "*" and (not o.startswith(("http://", "https://")) or "/" in o.split("://", 1)[1]):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
            out.append(o)
        return out
    @field_validator("worker_lanes")
    @classmethod
    def _worker_lanes(cls, value: list[Priority]) -> list[Priority]:
        return check_lanes(value)

    @field_validator("serve_lanes")
    @classmethod
    def _serve_lanes(cls, value: list[Priority]) -> list[Priority]:
        return check_lanes(value) if value else []


class DatabaseConfig(_Section):
    url: str = DEFAULT_DATABASE_URL
    pool_size: int = Field(default=8, ge=1)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


class KafkaOptions(_Section):
    """How to reach Kafka beyond the URL (kafka:// or kafkas://; user:password@ in the URL also
    selects SASL). Shared by [queue] (kafka:// queue) and [events] (kafka_url)."""

    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_username: str | None = None
    kafka_password: str | None = None
    kafka_ssl_cafile: str | None = None  # kafkas://: a CA bundle instead of the system's
    # A member that stops heartbeating leaves its group (its partitions move) after this long.
    kafka_session_timeout_seconds: float = Field(default=10.0, ge=1, le=300)
    # Partitions of each topic herald creates (existing topics are kept as they are).
    kafka_partitions: int = Field(default=6, ge=1, le=1000)


def _kafka_scheme(value: str) -> bool:
    return value.startswith(("kafka://", "kafkas://"))


class QueueConfig(KafkaOptions):
    url: str = "sql"
    lease_seconds: float = Field(default=30.0, gt=0)
    claim_batch: int = Field(default=64, ge=1, le=1000)
    idle_wait_seconds: float = Field(default=1.0, gt=0)
    # amqp:// only. Names: {prefix}.q.{channel}.{lane}, {prefix}.dlq.{channel}, {prefix}.events
    prefix: str = Field(default="herald", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    prefetch: int = Field(default=64, ge=1, le=10_000)  # unacked messages per lane consumer
    ids_per_message: int = Field(default=50, ge=1, le=1000)  # delivery ids in one message
    delivery_limit: int = Field(default=20, ge=1)  # redeliveries before the dead-letter queue
    relay_batch: int = Field(default=500, ge=1, le=10_000)  # outbox rows per publish
    # The priority lanes this process's outbox relay publishes. `herald serve` with
    # server.worker_lanes and `herald worker --lanes` set it to the lanes they send, so that a
    # bulk backlog is relayed by the bulk senders; some process must relay every lane.
    relay_lanes: list[Priority] = Field(default_factory=lambda: list(ALL_LANES))
    consume_events: bool = True  # worker processes consume the {prefix}.events exchange

    @field_validator("relay_lanes")
    @classmethod
    def _relay_lanes(cls, value: list[Priority]) -> list[Priority]:
        if not value:
            raise ValueError("needs at least one lane")
        if len(set(value)) != len(value):
            raise ValueError("names a lane twice")
        return sorted(value, key=lambda p: p.rank)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value != "sql" and not value.startswith(("amqp://", "amqps://")) and not _kafka_scheme(value):
            raise ValueError("must be 'sql', an amqp:// URL or a kafka:// URL")
        return value


class SchedulerConfig(_Section):
    # One active scheduler among many: the lease's time to live; a dead holder is replaced
    # within about this long, a live one renews every third of it.
    leader_ttl_seconds: float = Field(default=5.0, ge=0.5)
    # Due normal and low deliveries queued a second at most (critical and high: at once, all of
    # them); a released campaign is queued at this pace, in due order. 0: all at once.
    promote_rate: float = Field(default=5_000.0, ge=0)


class CacheConfig(_Section):
    url: str = "memory"
    prefix: str = Field(default="herald:", max_length=100)  # Redis key prefix (deployments sharing one Redis)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value != "memory" and not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be 'memory' or a redis:// URL")
        return value


class AuthConfig(_Section):
    secret: SecretStr | None = None  # signs user inbox tokens; generated and stored when absent
    user_token_ttl_seconds: int = Field(default=3600, ge=60)


class RetryConfig(_Section):
    schedule: list[float] = Field(default_factory=lambda: [0.0, 60.0, 300.0, 1800.0], min_length=1)
    jitter: float = Field(default=0.1, ge=0, le=1)

    @field_validator("schedule")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(v < 0 for v in value):
            raise ValueError("delays must be >= 0")
        return value


class IdempotencyConfig(_Section):
    ttl_seconds: float = Field(default=86_400.0, gt=0)
    dedup_window_seconds: float = Field(default=86_400.0, gt=0)  # for notifications' dedup_key


class CategoryConfig(_Section):
    opt_out: bool = True
    priority: Priority = Priority.NORMAL
    quiet_hours: bool = True
    digest: bool = False
    budget: str | None = None  # per user, e.g. "3/day", "10/week", "5/1h"
    digest_template: str | None = None  # a stored template rendered for digests; built-in when None
    digest_items: int = Field(default=10, ge=1, le=100)  # items listed per digest, the rest "and N more"
    tracking: bool | None = None  # email open/click tracking; None: on where users may opt out

    @model_validator(mode="after")
    def _digest_options(self) -> CategoryConfig:
        if self.digest_template is not None and not self.digest:
            raise ValueError("digest_template is set but digest is false for this category")
        return self

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        from herald.domain.quiet_hours import parse_budget  # noqa: PLC0415 - parse check only

        if value is not None:
            parse_budget(value)  # ValueError names the field: categories.<name>.budget
        return value


def _default_categories() -> dict[str, CategoryConfig]:
    return {
        "security": CategoryConfig(opt_out=False, priority=Priority.HIGH, quiet_hours=False),
        "transactional": CategoryConfig(opt_out=False, priority=Priority.HIGH, quiet_hours=False),
        "system": CategoryConfig(opt_out=True, priority=Priority.NORMAL),
        "marketing": CategoryConfig(opt_out=True, priority=Priority.LOW, digest=True, budget="3/day"),
    }


class TrackingConfig(_Section):
    """Email open and click tracking (issue 22); per category: ``categories.<name>.tracking``."""

    enabled: bool = True  # false: no message is rewritten, whatever the categories say
    machine_seconds: float = Field(default=2.0, ge=0, le=3600)  # events this soon after delivery are machines


class ChannelConfig(_Section):
    providers: list[str] = Field(min_length=1)
    concurrency: int = Field(default=32, ge=1, le=4096)
    reserved_high: int = Field(default=4, ge=0)  # slots only critical/high may use
    enabled: bool = True
    rate_limits: dict[str, str] = Field(default_factory=dict)  # provider -> "100/s", shared via the cache
    breaker_threshold: int = Field(default=5, ge=1)  # consecutive failures that open a provider's circuit
    breaker_open_seconds: float = Field(default=30.0, gt=0)  # then one half-open probe
    # The priority lanes this process sends on this channel (scale-out: a worker for the
    # critical and high lanes alone, others for the bulk). Default: every lane.
    lanes: list[Priority] = Field(default_factory=lambda: list(ALL_LANES))

    @field_validator("lanes")
    @classmethod
    def _lanes(cls, value: list[Priority]) -> list[Priority]:
        return check_lanes(value)

    @field_validator("rate_limits")
    @classmethod
    def _rates(cls, value: dict[str, str]) -> dict[str, str]:
        for rate in value.values():
            RateLimit.parse(rate)
        return value


def _default_channels() -> dict[str, ChannelConfig]:
    result = {c.value: ChannelConfig(providers=["console"]) for c in ALL_CHANNELS}
    result["in_app"] = ChannelConfig(providers=["in_app"])
    return result


class ConsoleConfig(_Section):
    path: str = "herald-console.jsonl"


SECRET_KEY_NAMES = re.compile(r"(?i)(password|secret|token|api_?key|private_?key|credential|auth)")


class MaskedTable(dict[str, Any]):
    """A provider's raw ``[providers.<name>]`` table: a dict whose text form masks every value
    under a key that names a secret (tracebacks, reprs, accidental logs)."""

    def __repr__(self) -> str:
        secret = SECRET_KEY_NAMES.search
        shown = {k: ("**********" if secret(str(k)) and v is not None else v) for k, v in self.items()}
        return repr(shown)

    __str__ = __repr__


class ProvidersConfig(BaseModel):
    # Every provider but the console keeps its own section (smtp, sendgrid, twilio, ...): the
    # provider module validates it (its config class beside it), the composition root applies it.
    model_config = ConfigDict(extra="allow")

    console: ConsoleConfig = Field(default_factory=ConsoleConfig)

    @model_validator(mode="after")
    def _masked(self) -> ProvidersConfig:
        # The raw tables of the other providers hold credentials as plain strings until the
        # provider validates its own (SecretStr): they print masked meanwhile.
        extra = self.__pydantic_extra__
        if extra:
            for name, table in extra.items():
                if isinstance(table, dict) and not isinstance(table, MaskedTable):
                    extra[name] = MaskedTable(table)
        return self


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_logs: bool = Field(default=False, alias="json")


class AlertsConfig(_Section):
    webhook_url: str | None = None
    min_interval_seconds: float = Field(default=60.0, ge=0)


class WorkerConfig(_Section):
    router_batch: int = Field(default=200, ge=1)  # notifications per routing pass (one claim, one write)
    # How often an idle router looks for unrouted work. Accepts wake it at once (in its process,
    # and on PostgreSQL from every other process too), so this is only the fallback.
    router_idle_seconds: float = Field(default=1.0, gt=0, le=3600)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)


class EventsConfig(KafkaOptions):
    # An event type without a rule: "reject" answers 422; "store" keeps it as unrouted.
    unrouted: Literal["reject", "store"] = "reject"
    rule_cache_seconds: float = Field(default=2.0, ge=0)
    # Producers' events from Kafka (any queue.url): the bootstrap servers, the topic (records
    # herald cannot accept go to "<topic>.invalid") and the consumer group of herald's workers.
    kafka_url: str | None = None
    kafka_topic: str = Field(default="herald.events", pattern=r"^[A-Za-z0-9_.-]{1,200}$")
    kafka_group: str = Field(default="herald-events", min_length=1, max_length=200)

    @field_validator("kafka_url")
    @classmethod
    def _kafka_url(cls, value: str | None) -> str | None:
        if value is not None and not _kafka_scheme(value):
            raise ValueError("must be a kafka:// or kafkas:// URL (bootstrap servers)")
        return value


class TemplatesConfig(_Section):
    """The budget of one render of a user template (preview, PUT with sample data, routing,
    digests): no honest template comes near it; a render past it is refused, naming the key."""

    render_timeout_ms: int = Field(default=200, ge=10, le=10_000)  # the render's CPU time (wall: 10x)
    render_max_work: int = Field(default=300_000, ge=1_000, le=100_000_000)  # iterations, calls, items walked
    render_max_output: int = Field(default=512 * 1024, ge=1024, le=16 * 1024 * 1024)  # characters
    render_max_value: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)  # one value's size
    render_max_depth: int = Field(default=64, ge=1, le=200)  # nested macro calls


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HERALD_", env_nested_delimiter="__", extra="forbid", populate_by_name=True
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    idempotency: IdempotencyConfig = Field(default_factory=IdempotencyConfig)
    categories: dict[str, CategoryConfig] = Field(default_factory=_default_categories)
    default_category: str = "transactional"
    channels: dict[str, ChannelConfig] = Field(default_factory=_default_channels)
    providers: ProvidersConfig = Field(default_factory=ProvidersConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    default_locale: str = "en"
    events: EventsConfig = Field(default_factory=EventsConfig)
    templates: TemplatesConfig = Field(default_factory=TemplatesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # Routing rules by event type, as the body of PUT /v1/rules/{event_type}; applied at start.
    rules: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_category not in self.categories:
            raise ValueError(f"default_category {self.default_category!r} is not in [categories]")
        for name in self.channels:
            if name not in {c.value for c in ALL_CHANNELS}:
                raise ValueError(f"channels.{name}: unknown channel")
        for event_type, body in self.rules.items():
            try:
                rule = parse_rule(event_type, body, source="config", prefix=f"rules.{event_type}.")
            except ValidationError as exc:
                raise ValueError(exc.detail) from None
            if rule.category is not None and rule.category not in self.categories:
                raise ValueError(f"rules.{event_type}.category: unknown category {rule.category!r}")
        return self

    @property
    def children_nice(self) -> int:
        """The niceness of ``herald serve``'s worker children: ``server.worker_nice``, else 10 on
        PostgreSQL and 0 on SQLite (BENCHMARKS.md, session 8). On PostgreSQL, children at the
        parent's priority took the cores from its API, routing and critical sends whenever the
        bulk ran (critical p99 99-173 ms in the flood, 51-67 ms with the children at 10). On
        SQLite every writer takes turns at one lock, and a niced child descheduled while it
        holds it makes the parent wait (accept p99 28-35 ms against 16-22 ms at 0)."""
        if self.server.worker_nice is not None:
            return self.server.worker_nice
        return 0 if self.database.url.startswith("sqlite") else 10

    @property
    def serve_worker_processes(self) -> int:
        """``herald serve``'s worker children: ``server.worker_processes``, else picked from the
        cores this process may use: none on a single core (a child only adds a process to
        schedule); on SQLite one core fewer than it has (``herald serve`` itself, which accepts,
        routes and writes, is the busiest process: one per core in all), at most 3 (one writer
        lock: more children only queue at it); on PostgreSQL one per core, at most 16.

        On SQLite, measured on 2 cores (issue 23, bench/reports/s23.md): with two children the
        three herald processes took turns on two cores and at the writer lock, and a child
        descheduled while holding the lock held up the API: in one series on a quiet machine
        (BENCHMARKS.md, session 11), accept at 500/s p99 300-377 ms with two children against
        106-121 ms with one; the drain pays for it (~20 % fewer notifications/s)."""
        if self.server.worker_processes is not None:
            return self.server.worker_processes
        cores = available_cores()
        if cores < 2:
            return 0
        if self.database.url.startswith("sqlite"):
            return min(cores - 1, 3)
        return min(cores, 16)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file, which arrives through init arguments.
        return (env_settings, init_settings)


def _merge_channels(raw: dict[str, Any]) -> dict[str, Any]:
    """Channels named in the file replace the defaults one by one, not all at once."""
    channels = raw.get("channels")
    if isinstance(channels, dict):
        merged: dict[str, Any] = {k: v.model_dump() for k, v in _default_channels().items()}
        merged.update(channels)
        raw["channels"] = merged
    categories = raw.get("categories")
    if isinstance(categories, dict):
        cats: dict[str, Any] = {k: v.model_dump() for k, v in _default_categories().items()}
        cats.update(categories)
        raw["categories"] = cats
    return raw


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load ``path`` (or ``HERALD_CONFIG``, or ``./herald.toml`` when present).

    Raises ConfigurationError naming the offending key.
    """
    return settings_from(read_source(path), **overrides)


def settings_from(source: ConfigSource, **overrides: Any) -> Settings:
    """Validate the file and environment ``source`` read (ConfigurationError names the key)."""
    raw: dict[str, Any] = {}
    if source.data is not None:
        try:
            raw = tomllib.loads(source.text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"{source.path}: not valid TOML: {exc}") from None
    elif source.explicit:
        raise ConfigurationError(f"configuration file {source.path} does not exist")
    raw = _merge_channels(raw)
    raw.update(overrides)
    try:
        return Settings(**raw)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise ConfigurationError(f"configuration key {key}: {err['msg']}") from None
