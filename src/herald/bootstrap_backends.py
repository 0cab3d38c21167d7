"""The composition root's backends, chosen by URL scheme: the store, the queue (with its outbox
relay), the cache, the live inbox's wake-ups and the brokers' event consumers.

A backend with its own dependencies (aio-pika, aiokafka, redis, psycopg) is imported only when
its URL is configured. :mod:`herald.bootstrap` re-exports the public names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from herald import store_root
from herald.adapters.cache.memory import MemoryCache
from herald.adapters.live.local import LocalLiveSignals
from herald.adapters.queue.outbox_relay import OutboxRelay
from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.sql import SqlStore
from herald.adapters.store.sql_inbox import SqlInboxFeed
from herald.config import Settings
from herald.domain.errors import ConfigurationError
from herald.domain.models import Priority
from herald.inbox import InboxHub
from herald.ports import Cache, Clock, LiveSignals, Queue
from herald.services.events import EventService

if TYPE_CHECKING:
    from herald.adapters.events_amqp import AmqpEventConsumer
    from herald.adapters.events_kafka import KafkaEventConsumer


def build_store(settings: Settings) -> SqlStore:
    return store_root.build_store(settings)


def build_queue(settings: Settings, store: SqlStore, clock: Clock) -> tuple[Queue, OutboxRelay | None]:
    """``sql``: the deliveries table. ``amqp://``: RabbitMQ, fed by the outbox through a relay.
    ``kafka://``: Kafka, likewise."""
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


def build_kafka_events(settings: Settings, events: EventService) -> KafkaEventConsumer | None:
    """Events from a Kafka topic (``events.kafka_url``, any queue.url)."""
    if settings.events.kafka_url is None:
        return None
    from herald.bootstrap_kafka import build_kafka_events as build  # noqa: PLC0415 - the kafka extra

    return build(settings, events)


async def build_inbox_hub(settings: Settings, store: SqlStore) -> InboxHub:
    """Live inbox streams: the feed in the database; wake-ups in-process, or through PostgreSQL
    ``NOTIFY`` when the database is PostgreSQL (any process may send what another streams)."""
    signals: LiveSignals
    if store.db.dialect == "postgresql":
        from herald.adapters.live.pg import PgLiveSignals  # noqa: PLC0415 - needs psycopg

        signals = await PgLiveSignals.for_database(store.db)
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
