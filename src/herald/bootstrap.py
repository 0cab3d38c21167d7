"""The composition root: builds adapters and services from the configuration, once per process.

The container and :func:`build` are here; the providers (registry, table checks, each channel's
provider) are :mod:`herald.bootstrap_providers`, the backends chosen by URL scheme (store,
queue, cache, live wake-ups, brokers' events) :mod:`herald.bootstrap_backends`, and Kafka's
:mod:`herald.bootstrap_kafka`. Their public names are importable from here as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from herald.adapters.queue.outbox_relay import OutboxRelay
from herald.adapters.store.sql import SqlStore
from herald.adapters.store.sql_console import SqlConsoleReads
from herald.alerts import Observers, OpsAlerter
from herald.bootstrap_backends import (
    build_broker_events,
    build_cache,
    build_inbox_hub,
    build_kafka_events,
    build_queue,
    build_store,
)
from herald.bootstrap_providers import (
    PROVIDER_EXTRAS,
    PROVIDER_MODULES,
    ProviderFactory,
    build_pools,
    import_provider_module,
    smtp_config,
    validate_provider_tables,
)
from herald.config import SECRET_KEY_NAMES, Settings
from herald.domain.engagement import MachinePolicy
from herald.domain.models import Category
from herald.domain.policies import RetrySchedule
from herald.domain.rules import parse_rule
from herald.inbox import InboxHub
from herald.metrics import Metrics
from herald.ports import Cache, Clock, Provider, Queue, RouterWakeups, Store
from herald.redact import register_secrets
from herald.services import rendering
from herald.services.accept import AcceptService
from herald.services.callbacks import CallbackService
from herald.services.catalog import Catalog
from herald.services.console import ConsoleService, provider_health
from herald.services.console_auth import ConsoleSessions
from herald.services.deliver import DeliveryService
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

__all__ = [
    "PROVIDER_EXTRAS",
    "PROVIDER_MODULES",
    "Container",
    "ProviderFactory",
    "SystemClock",
    "apply_config_rules",
    "build",
    "build_broker_events",
    "build_cache",
    "build_catalog",
    "build_inbox_hub",
    "build_kafka_events",
    "build_queue",
    "build_store",
    "import_provider_module",
    "render_limits",
    "smtp_config",
    "validate_provider_tables",
]

log = structlog.get_logger("herald.bootstrap")


class SystemClock:
    def now(self) -> float:
        return time.time()


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


_GRACEFUL_TASKS = frozenset(
    {"herald-leader", "herald-outbox-relay", "herald-broker-events", "herald-kafka-events"}
)


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
    built, pools = build_pools(settings, hub, cache, providers)

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
        kafka_events=build_kafka_events(settings, events),
    )
