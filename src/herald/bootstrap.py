"""The composition root: builds adapters and services from the configuration, once per process."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import text

from herald import store_root
from herald.adapters.cache.memory import MemoryCache
from herald.adapters.live.local import LocalLiveSignals
from herald.adapters.providers.composite import FailoverProvider, PushDispatcher, RateLimit
from herald.adapters.providers.console import ConsoleProvider
from herald.adapters.providers.in_app import InAppProvider
from herald.adapters.providers.smtp import SmtpConfig, SmtpProvider
from herald.adapters.queue.outbox_relay import OutboxRelay
from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.sql import SqlStore
from herald.adapters.store.sql_console import SqlConsoleReads
from herald.adapters.store.sql_inbox import SqlInboxFeed
from herald.alerts import Observers, OpsAlerter
from herald.config import SECRET_KEY_NAMES, ChannelConfig, Settings
from herald.domain.engagement import MachinePolicy
from herald.domain.errors import ConfigurationError
from herald.domain.models import Category, Priority
from herald.domain.policies import RetrySchedule
from herald.domain.rules import parse_rule
from herald.inbox import InboxHub
from herald.metrics import Metrics
from herald.ports import Cache, Clock, LiveSignals, Provider, Queue, RouterWakeups, Store
from herald.redact import register_secrets
from herald.services import rendering
from herald.services.accept import AcceptService
from herald.services.callbacks import CallbackService
from herald.services.catalog import Catalog
from herald.services.console import ConsoleService, provider_health
from herald.services.console_auth import ConsoleSessions
from herald.services.deliver import ChannelPool, DeliveryService
from herald.services.digest import DigestService
from herald.services.events import EventService
from herald.services.leader import LeaderLease
from herald.services.link_tracking import LinkTracker
from herald.services.lookups import Lookups
from herald.services.render_budget import RenderLimits
from herald.services.route import RouterService
from herald.services.schedule import SchedulerService
from herald.services.signing import Signer, UnsubscribeSigner, UserTokens
from herald.services.stats import StatsService
from herald.services.track import TrackService

if TYPE_CHECKING:
    from herald.adapters.events_amqp import AmqpEventConsumer
    from herald.adapters.events_kafka import KafkaEventConsumer

log = structlog.get_logger("herald.bootstrap")


class SystemClock:
    def now(self) -> float:
        return time.time()


ProviderFactory = Callable[[Settings, InboxHub], Provider]


def _section(settings: Settings, name: str) -> dict[str, Any]:
    extra = settings.providers.model_extra or {}
    raw = extra.get(name)
    if raw is None:
        raise ConfigurationError(
            f"providers.{name}: a channel uses it but there is no [providers.{name}] table"
        )
    if not isinstance(raw, dict):
        raise ConfigurationError(f"providers.{name}: must be a table")
    return raw


def _validated(name: str, model: type[BaseModel], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigurationError(f"configuration key providers.{name}.{key}: {err['msg']}") from None


def _external(name: str) -> ProviderFactory:
    """Providers with their own dependencies are imported only when configured."""

    def factory(settings: Settings, _hub: InboxHub) -> Provider:
        raw = _section(settings, name)
        module = import_provider_module(name)
        config_cls, provider_cls = (getattr(module, n) for n in _MODULES[name][1:])
        provider: Provider = provider_cls(_validated(name, config_cls, raw))
        return provider

    return factory


def import_provider_module(name: str) -> Any:
    """The provider's adapter module; ConfigurationError naming the extra it needs if missing."""
    extra, packages = PROVIDER_EXTRAS.get(name, (None, ()))
    try:
        for package in packages:
            importlib.import_module(package)
        return importlib.import_module(f"herald.adapters.providers.{_MODULES[name][0]}")
    except ModuleNotFoundError as exc:
        if extra is not None:
            raise ConfigurationError(
                f"providers.{name} needs the '{extra}' extra ({exc.name} is not installed): "
                f"pip install 'herald[{extra}]'"
            ) from None
        raise ConfigurationError(
            f"providers.{name}: a dependency is missing ({exc.name}); reinstall herald"
        ) from None


# Providers whose SDKs are not in the default install: the extra and the packages it brings.
PROVIDER_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ses": ("ses", ("botocore",)),
    "chat": ("chat", ("apprise",)),
    "apns": ("apns", ("httpx", "h2")),
}

_MODULES = {
    "sendgrid": ("sendgrid", "SendGridConfig", "SendGridProvider"),
    "ses": ("ses", "SesConfig", "SesProvider"),
    "twilio": ("twilio", "TwilioConfig", "TwilioProvider"),
    "fcm": ("fcm", "FcmConfig", "FcmProvider"),
    "apns": ("apns", "ApnsConfig", "ApnsProvider"),
    "webpush": ("webpush", "WebPushConfig", "WebPushProvider"),
    "webhook": ("webhook", "WebhookConfig", "WebhookProvider"),
    "chat": ("chat", "ChatConfig", "ChatProvider"),
}


def smtp_config(settings: Settings) -> SmtpConfig:
    """SMTP needs no table: without one it speaks to a relay on 127.0.0.1:25."""
    raw = (settings.providers.model_extra or {}).get("smtp", {})
    if not isinstance(raw, dict):
        raise ConfigurationError("providers.smtp: must be a table")
    config: SmtpConfig = _validated("smtp", SmtpConfig, raw)
    return config


PROVIDER_MODULES = _MODULES  # name -> (module, config class, provider class)


def _provider_factories() -> dict[str, ProviderFactory]:
    factories: dict[str, ProviderFactory] = {
        "console": lambda s, _hub: ConsoleProvider(s.providers.console.path),
        "smtp": lambda s, _hub: SmtpProvider(smtp_config(s)),
        "in_app": lambda _s, hub: InAppProvider(hub),
    }
    for name in _MODULES:
        factories[name] = _external(name)
    return factories


_PUSH_KINDS = ("apns", "fcm", "webpush")


def _channel_provider(channel: str, ch: ChannelConfig, chosen: list[Provider], cache: Cache) -> Provider:
    """One provider per channel: push dispatches by device kind; others fail over in order."""
    if channel == "push" and any(p.name in _PUSH_KINDS for p in chosen):
        by_kind = {p.name: p for p in chosen if p.name in _PUSH_KINDS}
        others = [p for p in chosen if p.name not in _PUSH_KINDS]
        return PushDispatcher(by_kind, fallback=others[0] if others else None)
    if len(chosen) == 1 and not ch.rate_limits:
        return chosen[0]
    rates = {name: RateLimit.parse(rate) for name, rate in ch.rate_limits.items()}
    return FailoverProvider(
        chosen, cache=cache, rates=rates, threshold=ch.breaker_threshold, open_seconds=ch.breaker_open_seconds
    )


def build_catalog(settings: Settings) -> Catalog:
    categories = {
        name: Category(
            name=name,
            opt_out=c.opt_out,
            priority=c.priority,
            quiet_hours=c.quiet_hours,
            digest=c.digest,
            budget=c.budget,
            digest_template=c.digest_template,
            digest_items=c.digest_items,
            tracking=c.tracking,
        )
        for name, c in settings.categories.items()
    }
    return Catalog(
        categories=categories,
        default_category=settings.default_category,
        enabled_channels=frozenset(name for name, ch in settings.channels.items() if ch.enabled),
        retry=RetrySchedule(delays=tuple(settings.retry.schedule), jitter=settings.retry.jitter),
        default_locale=settings.default_locale,
        idempotency_ttl=settings.idempotency.ttl_seconds,
        dedup_window=settings.idempotency.dedup_window_seconds,
        public_url=settings.server.public_url,
    )


@dataclass
class Container:
    settings: Settings
    store: Store
    queue: Queue
    cache: Cache
    clock: Clock
    catalog: Catalog
    hub: InboxHub
    metrics: Metrics
    alerter: OpsAlerter
    providers: dict[str, Provider]
    accept: AcceptService
    router: RouterService
    delivery: DeliveryService
    scheduler: SchedulerService
    user_tokens: UserTokens
    unsubscribe: UnsubscribeSigner
    tracker: TrackService
    stats: StatsService
    callbacks: CallbackService
    lookups: Lookups
    events: EventService
    # Scale-out (issue 5): the outbox relay (amqp queue), events from the broker, the scheduler lease.
    relay: OutboxRelay | None = None
    broker_events: AmqpEventConsumer | None = None
    leader: LeaderLease | None = None
    # The operator console (issue 20): its read model and its sign-in.
    console: ConsoleService | None = None
    console_sessions: ConsoleSessions | None = None
    kafka_events: KafkaEventConsumer | None = None  # issue 21: events from a Kafka topic
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def start_roles(self, roles: set[str], *, channels: Collection[str] | None = None) -> None:
        """Start the background roles: ``router``, ``worker``, ``scheduler``.

        ``channels``: the channels this process's ``worker`` sends for (default: all enabled).
        """
        if "router" in roles:
            self.accept.express = self.router  # critical/high routed as soon as committed
            sending = [p for name, p in self.delivery.pools.items() if channels is None or name in channels]
            if "worker" in roles and sending and all(p.min_rank >= 2 for p in sending):
                # A worker of the bulk lanes only (`herald worker --lanes normal,low`): critical
                # and high notifications are for the routers of the processes that send them.
                self.router.min_rank = min(p.min_rank for p in sending)
            idle = self.settings.worker.router_idle_seconds
            self._tasks.append(
                asyncio.create_task(self.router.run(self._stopping, idle=idle), name="herald-router")
            )
        if "worker" in roles:
            self._tasks.append(asyncio.create_task(self.delivery.run(channels), name="herald-workers"))
        if "scheduler" in roles:
            if self.leader is not None:
                self._tasks.append(asyncio.create_task(self.leader.run(self._stopping), name="herald-leader"))
            self._tasks.append(
                asyncio.create_task(self.scheduler.run(self._stopping, self.leader), name="herald-scheduler")
            )
        if self.relay is not None and roles & {"worker", "scheduler"}:
            relay = self.relay.run(self._stopping)
            self._tasks.append(asyncio.create_task(relay, name="herald-outbox-relay"))
        if self.broker_events is not None and "worker" in roles:
            self._tasks.append(
                asyncio.create_task(self.broker_events.run(self._stopping), name="herald-broker-events")
            )
        if self.kafka_events is not None and "worker" in roles:
            self._tasks.append(
                asyncio.create_task(self.kafka_events.run(self._stopping), name="herald-kafka-events")
            )

    def broker_status(self) -> list[dict[str, Any]]:
        """The Kafka consumers of this process: state and lag (``/readyz``, ``/metrics``)."""
        out: list[dict[str, Any]] = []
        if self.kafka_events is not None and self.kafka_events.state != "stopped":
            out.append(self.kafka_events.status())
        status = getattr(self.queue, "status", None)
        if callable(status):
            out.extend(status())
        return out

    async def stop(self) -> None:
        self._stopping.set()
        self.router.wake()
        self.scheduler.wake()
        if self.console is not None:
            await self.console.close()  # its background counting, before the store closes
        await self.delivery.stop(self.settings.worker.shutdown_grace_seconds)
        await self.accept.writer.close()  # accepts under way commit before the store closes
        # The lease, relay and broker consumer watch _stopping: let them release and close.
        closing = [tk for tk in self._tasks if tk.get_name() in _GRACEFUL_TASKS]
        if closing:
            await asyncio.wait(closing, timeout=2.0)
        for tk in self._tasks:
            tk.cancel()
        for tk in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await tk
        self._tasks.clear()
        for p in self.providers.values():
            with contextlib.suppress(Exception):
                await p.close()
        await self.alerter.close()
        await self.hub.close()
        await self.cache.close()
        await self.queue.close()
        await self.store.close()


async def apply_config_rules(settings: Settings, store: Store, catalog: Catalog, clock: Clock) -> None:
    """Rules from the configuration file are (re)written at every start, so every process
    sees them; a rule changed through the API keeps its change until the next start."""
    for event_type, body in settings.rules.items():
        rule = parse_rule(event_type, body, source="config", prefix=f"rules.{event_type}.")
        if rule.category is not None:
            catalog.category(rule.category, f"rules.{event_type}.category")
        await store.put_rule(rule, now=clock.now())


def _configured_secrets(settings: Settings, auth_secret: str) -> list[Any]:
    """Every credential in the configuration, masked wherever it would appear in a log."""
    found: list[Any] = [auth_secret]
    stack: list[Any] = list((settings.providers.model_extra or {}).values())
    while stack:
        table = stack.pop()
        if isinstance(table, dict):
            for key, value in table.items():
                if SECRET_KEY_NAMES.search(str(key)):
                    found.append(value)  # a string, or a list of them (previous secrets)
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(table, list):
            stack.extend(table)
    url = settings.database.url
    if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        found.append(url.split("@", 1)[0].split("//", 1)[-1].split(":", 1)[1])  # the password
    return [v for v in found if v is not None]


def render_limits(settings: Settings) -> RenderLimits:
    t = settings.templates
    return RenderLimits(
        timeout_ms=t.render_timeout_ms,
        max_work=t.render_max_work,
        max_output=t.render_max_output,
        max_value=t.render_max_value,
        max_depth=t.render_max_depth,
    )


def build_store(settings: Settings) -> SqlStore:
    return store_root.build_store(settings)


_GRACEFUL_TASKS = frozenset(
    {"herald-leader", "herald-outbox-relay", "herald-broker-events", "herald-kafka-events"}
)


def build_queue(settings: Settings, store: SqlStore, clock: Clock) -> tuple[Queue, OutboxRelay | None]:
    """``sql``: the deliveries table. ``amqp://``: RabbitMQ, fed by the outbox through a relay."""
    q = settings.queue
    if q.url == "sql":
        return SqlQueue(store.db), None
    store.outbox = True
    if q.url.startswith(("kafka://", "kafkas://")):
        from herald.bootstrap_kafka import build_kafka_queue  # noqa: PLC0415 - the kafka extra

        kafka = build_kafka_queue(settings, store, clock)
        ranks = None if len(q.relay_lanes) == len(Priority) else [p.rank for p in q.relay_lanes]
        kafka_relay = OutboxRelay(
            store, kafka.publish, clock, batch=q.relay_batch, max_sleep=q.idle_wait_seconds, ranks=ranks
        )
        kafka.add_wake_listener(kafka_relay.wake)
        return kafka, kafka_relay
    try:
        from herald.adapters.queue.amqp import AmqpQueue  # noqa: PLC0415 - the rabbitmq extra
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"queue.url is amqp:// but {exc.name} is not installed: pip install 'herald[rabbitmq]'"
        ) from None
    store.outbox = True
    queue = AmqpQueue(
        q.url,
        store,
        clock,
        prefix=q.prefix,
        prefetch=q.prefetch,
        ids_per_message=q.ids_per_message,
        delivery_limit=q.delivery_limit,
        # Consume only the lanes this process sends (config.check_lanes keeps them sorted).
        lanes={name: [p.rank for p in ch.lanes] for name, ch in settings.channels.items()},
        # Routers' wake-ups across processes: PostgreSQL NOTIFY (the broker carries deliveries).
        wakeups_db=store.db if store.db.dialect == "postgresql" else None,
    )
    ranks = None if len(q.relay_lanes) == len(Priority) else [p.rank for p in q.relay_lanes]
    relay = OutboxRelay(
        store, queue.publish, clock, batch=q.relay_batch, max_sleep=q.idle_wait_seconds, ranks=ranks
    )
    queue.add_wake_listener(relay.wake)
    return queue, relay


def build_broker_events(settings: Settings, events: EventService) -> AmqpEventConsumer | None:
    """Worker processes consume events published to the ``{prefix}.events`` exchange."""
    q = settings.queue
    if not q.url.startswith(("amqp://", "amqps://")) or not q.consume_events:
        return None
    from herald.adapters.events_amqp import AmqpEventConsumer  # noqa: PLC0415 - the rabbitmq extra

    async def handle(payload: dict[str, Any], *, idempotency_key: str | None) -> None:
        await events.ingest(payload, source="amqp", idempotency_key=idempotency_key)

    return AmqpEventConsumer(q.url, handle, prefix=q.prefix, delivery_limit=q.delivery_limit)


async def build_inbox_hub(settings: Settings, store: SqlStore) -> InboxHub:
    """Live inbox streams: the feed in the database; wake-ups in-process, or through PostgreSQL
    ``NOTIFY`` when the database is PostgreSQL (any process may send what another streams)."""
    signals: LiveSignals
    if store.db.dialect == "postgresql":
        from herald.adapters.live.pg import PgLiveSignals  # noqa: PLC0415 - needs psycopg

        dsn = store.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        # One NOTIFY channel per schema: deployments sharing a database do not wake each other.
        schema = await store.db.run(lambda c: c.execute(text("SELECT current_schema()")).scalar())
        channel = "herald_inbox"
        if schema and schema != "public":
            channel = (channel + "_" + re.sub(r"[^a-z0-9_]", "_", str(schema).lower()))[:63]
        signals = PgLiveSignals(dsn, channel=channel)
    else:
        signals = LocalLiveSignals()
    hub = InboxHub(SqlInboxFeed(store.db), signals, per_user=settings.server.streams_per_user)
    store.on_inbox_numbered(hub.numbered)  # in-app items are numbered as their result commits
    await hub.start()
    return hub


def build_cache(settings: Settings) -> Cache:
    url = settings.cache.url
    if url == "memory":
        return MemoryCache()
    if url.startswith(("redis://", "rediss://")):
        # Imported here: the redis package is an optional extra (the module says which).
        from herald.adapters.cache.redis import RedisCache  # noqa: PLC0415

        return RedisCache(url, prefix=settings.cache.prefix)
    raise ConfigurationError(f"cache.url: expected 'memory' or a redis:// URL, got {url.split(':')[0]}:")


def _wake_routers(
    accept: AcceptService, router: RouterService, queue: RouterWakeups
) -> Callable[[bool], None]:
    """What an accept does for the notifications it did not route itself: wake this process's
    router, and, in a process that runs none (``herald api``), every other process's."""

    def wake(urgent: bool) -> None:
        router.wake(urgent)
        if accept.express is None:  # no router here (start_roles sets it with the router role)
            queue.wake_routers(urgent)

    return wake


def validate_provider_tables(settings: Settings) -> None:
    """Every ``[providers.NAME]`` table is checked at start, whether a channel uses it yet or
    not: a bad value fails now, naming its key, not the day a channel is pointed at it. (A
    provider whose extra is not installed is checked only where a channel uses it.)"""
    for name, raw in (settings.providers.model_extra or {}).items():
        if name == "smtp":
            smtp_config(settings)
        elif name in _MODULES:
            try:
                module = import_provider_module(name)
            except ConfigurationError:
                continue
            if not isinstance(raw, dict):
                raise ConfigurationError(f"providers.{name}: must be a table")
            _validated(name, getattr(module, _MODULES[name][1]), raw)


async def build(
    settings: Settings,
    *,
    clock: Clock | None = None,
    providers: Mapping[str, Provider] | None = None,
    store: SqlStore | None = None,
) -> Container:
    """Build every adapter and service. ``providers`` overrides providers by name (tests)."""
    clock = clock or SystemClock()
    store = store or build_store(settings)
    await store.start()
    queue, relay = build_queue(settings, store, clock)
    await queue.start()  # sql on PostgreSQL: LISTEN for wake-ups; amqp: connect
    cache: Cache = build_cache(settings)

    configured = settings.auth.secret.get_secret_value() if settings.auth.secret else None
    secret = configured or await store.put_setting_if_absent("auth_secret", secrets.token_hex(32))
    register_secrets(_configured_secrets(settings, secret))
    signer = Signer(secret.encode())
    unsubscribe = UnsubscribeSigner(signer, settings.server.public_url)
    links = LinkTracker(signer, settings.server.public_url)
    user_tokens = UserTokens(signer, settings.auth.user_token_ttl_seconds)

    rendering.configure(render_limits(settings))
    hub = await build_inbox_hub(settings, store)
    metrics = Metrics()
    alerter = OpsAlerter(settings.alerts.webhook_url, min_interval=settings.alerts.min_interval_seconds)
    catalog = build_catalog(settings)
    factories = _provider_factories()
    validate_provider_tables(settings)
    built: dict[str, Provider] = dict(providers or {})
    pools: dict[str, ChannelPool] = {}
    for channel, ch in settings.channels.items():
        if not ch.enabled:
            continue
        chosen: list[Provider] = []
        for name in ch.providers:
            if name not in built:
                factory = factories.get(name)
                if factory is None:
                    raise ConfigurationError(
                        f"channels.{channel}.providers: unknown provider {name!r}; "
                        f"known: {', '.join(sorted(factories))}"
                    )
                built[name] = factory(settings, hub)
            chosen.append(built[name])
        pools[channel] = ChannelPool(
            channel=channel,
            providers=[_channel_provider(channel, ch, chosen, cache)],
            concurrency=ch.concurrency,
            reserved_high=min(ch.reserved_high, ch.concurrency - 1),
            min_rank=ch.lanes[0].rank,
            max_rank=ch.lanes[-1].rank,
        )

    delivery = DeliveryService(
        store,
        queue,
        clock,
        catalog,
        pools,
        lease=settings.queue.lease_seconds,
        idle_wait=settings.queue.idle_wait_seconds,
        observer=Observers(metrics, alerter),
        claim_batch=settings.queue.claim_batch,
    )
    router = RouterService(
        store,
        clock,
        catalog,
        queue.wake,
        unsubscribe,
        batch=settings.worker.router_batch,
        lease=settings.queue.lease_seconds,
        cache=cache,
        hand_over=queue.hand_over,
        senders=delivery,  # only while its pools run (the worker role of this process)
        tracking=links if settings.tracking.enabled else None,
    )
    lookups = Lookups(store)
    accept = AcceptService(store, clock, catalog, router.wake, lookups=lookups)
    if isinstance(queue, RouterWakeups):
        accept.on_accepted = _wake_routers(accept, router, queue)
        queue.add_route_listener(router.wake)
    events = EventService(
        store,
        clock,
        accept,
        unrouted=settings.events.unrouted,
        rule_cache_seconds=settings.events.rule_cache_seconds,
    )
    await apply_config_rules(settings, store, catalog, clock)
    scheduler = SchedulerService(
        store,
        queue,
        clock,
        max_sleep=settings.queue.idle_wait_seconds,
        digests=DigestService(store, clock, catalog, unsubscribe),
        promote_rate=settings.scheduler.promote_rate or None,
    )
    tracker = TrackService(
        store, clock, links=links, policy=MachinePolicy(machine_seconds=settings.tracking.machine_seconds)
    )
    console = ConsoleService(
        store,
        SqlConsoleReads(store.db),
        queue,
        clock,
        catalog,
        lookups,
        provider_health=lambda: provider_health(delivery.pools, delivery.unhealthy),
        forget_rule=events.forget,
    )
    return Container(
        console=console,
        console_sessions=ConsoleSessions(signer, lookups),
        settings=settings,
        store=store,
        queue=queue,
        cache=cache,
        clock=clock,
        catalog=catalog,
        hub=hub,
        metrics=metrics,
        alerter=alerter,
        providers=built,
        accept=accept,
        router=router,
        delivery=delivery,
        scheduler=scheduler,
        user_tokens=user_tokens,
        unsubscribe=unsubscribe,
        tracker=tracker,
        stats=StatsService(store, clock),
        callbacks=CallbackService(built, tracker, public_base=settings.server.public_url),
        lookups=lookups,
        events=events,
        relay=relay,
        broker_events=build_broker_events(settings, events),
        leader=LeaderLease(store, clock, ttl=settings.scheduler.leader_ttl_seconds),
        kafka_events=_kafka_events(settings, events),
    )


def _kafka_events(settings: Settings, events: EventService) -> KafkaEventConsumer | None:
    if settings.events.kafka_url is None:
        return None
    from herald.bootstrap_kafka import build_kafka_events  # noqa: PLC0415 - the kafka extra

    return build_kafka_events(settings, events)
