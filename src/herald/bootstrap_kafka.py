"""The composition root's Kafka part: the ``kafka://`` queue and the Kafka event consumer.

Imported by :mod:`herald.bootstrap` only when a ``kafka://`` URL is configured, so that aiokafka
(the ``kafka`` extra) is needed only then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from herald.config import KafkaOptions, Settings
from herald.domain.errors import ConfigurationError
from herald.ports import Clock
from herald.services.events import EventService

if TYPE_CHECKING:
    from herald.adapters.events_kafka import KafkaEventConsumer
    from herald.adapters.kafka_client import KafkaConnection
    from herald.adapters.queue.kafka import KafkaQueue
    from herald.adapters.store.sql import SqlStore


def _connection(url: str, options: KafkaOptions, key: str) -> KafkaConnection:
    try:
        from herald.adapters.kafka_client import parse_kafka_url  # noqa: PLC0415 - the kafka extra
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"{key} is a kafka:// URL but {exc.name} is not installed: pip install 'herald[kafka]'"
        ) from None
    return parse_kafka_url(
        url,
        key=key,
        sasl_mechanism=options.kafka_sasl_mechanism,
        username=options.kafka_username,
        password=options.kafka_password,
        ssl_cafile=options.kafka_ssl_cafile,
    )


def build_kafka_queue(settings: Settings, store: SqlStore, clock: Clock) -> KafkaQueue:
    q = settings.queue
    conn = _connection(q.url, q, "queue.url")
    from herald.adapters.queue.kafka import KafkaQueue  # noqa: PLC0415 - the kafka extra

    return KafkaQueue(
        conn,
        store,
        clock,
        prefix=q.prefix,
        partitions=q.kafka_partitions,
        prefetch=q.prefetch,
        ids_per_message=q.ids_per_message,
        session_timeout=q.kafka_session_timeout_seconds,
        # Consume only the lanes this process sends (config.check_lanes keeps them sorted).
        lanes={name: [p.rank for p in ch.lanes] for name, ch in settings.channels.items()},
    )


def build_kafka_events(settings: Settings, events: EventService) -> KafkaEventConsumer | None:
    """Worker processes consume ``events.kafka_topic`` in the group ``events.kafka_group``."""
    e = settings.events
    if e.kafka_url is None:
        return None
    conn = _connection(e.kafka_url, e, "events.kafka_url")
    from herald.adapters.events_kafka import KafkaEventConsumer  # noqa: PLC0415 - the kafka extra

    async def handle(payload: dict[str, Any], *, idempotency_key: str | None) -> None:
        await events.ingest(payload, source="kafka", scope="kafka", idempotency_key=idempotency_key)

    return KafkaEventConsumer(
        conn,
        handle,
        topic=e.kafka_topic,
        group=e.kafka_group,
        partitions=e.kafka_partitions,
        session_timeout=e.kafka_session_timeout_seconds,
        heartbeat_interval=max(0.1, e.kafka_session_timeout_seconds / 3),
    )
