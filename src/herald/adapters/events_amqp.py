"""Event ingestion from RabbitMQ: producers publish events instead of calling ``POST /v1/events``.

Topology (``prefix`` ``herald``)::

    exchange herald.events (topic, durable)  ──#──►  queue herald.events.ingest (quorum, durable)
                                                    queue herald.events.invalid (quorum, durable)

A producer publishes the ``POST /v1/events`` JSON body with the event type as routing key and the
idempotency key as ``message_id`` (persistent, ideally with publisher confirms). herald consumes
with manual acks and a bounded prefetch and hands each event to the same use case as the HTTP
route (``EventService.ingest``), so a broker event is routed exactly like an HTTP one, and a
redelivered message with the same ``message_id`` creates nothing twice.

Outcomes, and why none of them blocks the consumer or loses the message:

- accepted (or an idempotent repeat): ack.
- not JSON, not an object, a routing key contradicting the body's ``type``, or refused by the
  use case (``ValidationError``, an idempotency key reused with another body, any other 4xx):
  the original body and headers are published to ``herald.events.invalid`` with
  ``x-herald-reason`` and ``x-herald-routing-key`` (publisher confirm), *then* acked. An
  unexpected error in herald is treated the same way (reason ``internal error: …``): an operator
  can shovel the messages back once it is fixed.
- the store is down (``ServiceUnavailable``) or the same key is still being accepted
  (``Conflict``): retried in place with backoff while the message stays unacked — redelivery
  through ``nack(requeue)`` would spend the queue's delivery limit (RabbitMQ 4 quorum queues
  default to 20) on an outage that is not the message's fault. On shutdown it is nacked back.
- a consumer that dies holding messages: the broker redelivers them; the ingest queue's
  ``x-delivery-limit`` dead-letters a message that keeps killing consumers into the invalid queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

import aio_pika  # the rabbitmq extra; bootstrap imports this module only for amqp:// URLs
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from herald.adapters.queue.amqp import BROKER_ERRORS, QUORUM, broker_error, connect
from herald.domain import strict_json
from herald.domain.errors import Conflict, HeraldError, MalformedRequest, ServiceUnavailable

log = structlog.get_logger("herald.events.amqp")


class _GivenBack(Exception):
    """Stopping while the store is down: the message was nacked back to its queue."""


class EventHandler(Protocol):
    async def __call__(self, payload: dict[str, Any], *, idempotency_key: str | None) -> None: ...


class AmqpEventConsumer:
    def __init__(
        self,
        url: str,
        handler: EventHandler,
        *,
        prefix: str = "herald",
        prefetch: int = 32,
        delivery_limit: int = 20,
        retry_pause: float = 0.5,
        max_retry_pause: float = 10.0,
        connect_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        self.url = url
        self.handler = handler
        self.exchange_name = f"{prefix}.events"
        self.queue_name = f"{prefix}.events.ingest"
        self.invalid_queue = f"{prefix}.events.invalid"
        self.prefetch = prefetch
        self.delivery_limit = delivery_limit
        self.retry_pause = retry_pause
        self.max_retry_pause = max_retry_pause
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        self.handled = 0  # accepted (or repeated) events
        self.rejected = 0  # sent to the invalid queue
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Connect, declare the topology and start consuming; raise when the broker is down."""
        conn = await connect(
            self.url,
            name="herald-events",
            timeout=self.connect_timeout,
            reconnect_interval=self.reconnect_interval,
        )
        try:
            self._publisher = await conn.channel(publisher_confirms=True, on_return_raises=True)
            consumer = await conn.channel()
            await consumer.set_qos(prefetch_count=self.prefetch)
            exchange = await consumer.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            await consumer.declare_queue(self.invalid_queue, durable=True, arguments=QUORUM)
            queue = await consumer.declare_queue(
                self.queue_name,
                durable=True,
                arguments={
                    **QUORUM,
                    "x-delivery-limit": self.delivery_limit,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.invalid_queue,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            await queue.bind(exchange, routing_key="#")
            await queue.consume(self._on_message)
        except BROKER_ERRORS as exc:
            with contextlib.suppress(*BROKER_ERRORS):
                await conn.close()
            raise broker_error(exc, "starting the event consumer") from exc
        self._connection = conn
        log.info("events.amqp_consuming", exchange=self.exchange_name, queue=self.queue_name)

    async def run(self, stopping: asyncio.Event) -> None:
        """Start (retrying while the broker is unreachable), consume until ``stopping``, close."""
        failures = 0
        while not stopping.is_set() and self._connection is None:
            try:
                await self.start()
            except ServiceUnavailable as exc:
                failures += 1
                if failures == 1:
                    log.warning("events.amqp_unavailable", error=exc.detail)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), min(10.0, 0.5 * 2 ** min(failures, 5)))
        try:
            await stopping.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        self._stopping.set()
        conn, self._connection = self._connection, None
        if conn is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await conn.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        routing_key = message.routing_key or ""
        reason = None
        payload: Any = None
        try:
            payload = strict_json.loads(message.body)  # what the HTTP API would refuse, parked
        except MalformedRequest as exc:
            reason = f"invalid JSON: {exc.detail}"
        if reason is None and not isinstance(payload, dict):
            reason = f"the body must be a JSON object, not {type(payload).__name__}"
        if reason is None:
            assert isinstance(payload, dict)
            try:
                reason = await self._handle(message, payload, routing_key)
            except _GivenBack:
                return
        if reason is not None:
            if not await self._reject(message, reason):
                return
            self.rejected += 1
        else:
            self.handled += 1
        with contextlib.suppress(*BROKER_ERRORS):
            await message.ack()

    async def _handle(
        self, message: AbstractIncomingMessage, payload: dict[str, Any], routing_key: str
    ) -> str | None:
        """Run the handler; return the reason to reject, or None once handled."""
        declared = payload.get("type")
        if declared is None and routing_key:
            payload["type"] = routing_key
        elif isinstance(declared, str) and routing_key and declared != routing_key:
            return f"the body's type {declared!r} differs from the routing key {routing_key!r}"
        pause = self.retry_pause
        while True:
            try:
                await self.handler(payload, idempotency_key=message.message_id)
                return None
            except (ServiceUnavailable, Conflict) as exc:
                if self._stopping.is_set():
                    with contextlib.suppress(*BROKER_ERRORS):
                        await message.nack(requeue=True)
                    raise _GivenBack from exc
                log.warning("events.amqp_retrying", error=exc.detail, pause_s=pause)
                await asyncio.sleep(pause)
                pause = min(self.max_retry_pause, pause * 2)
            except HeraldError as exc:
                return f"{exc.title}: {exc.detail}" + (f" ({exc.field})" if exc.field else "")
            except Exception as exc:
                log.exception("events.amqp_internal_error", routing_key=routing_key)
                return f"internal error: {type(exc).__name__}: {exc}"

    async def _reject(self, message: AbstractIncomingMessage, reason: str) -> bool:
        """Park the original message in the invalid queue (confirmed). False: it was nacked."""
        headers = dict(message.headers or {})
        headers["x-herald-reason"] = reason[:1000]
        headers["x-herald-routing-key"] = message.routing_key or ""
        headers["x-herald-exchange"] = message.exchange or ""
        parked = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            app_id=message.app_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            assert self._publisher is not None
            await self._publisher.default_exchange.publish(
                parked, routing_key=self.invalid_queue, mandatory=True, timeout=10
            )
        except BROKER_ERRORS as exc:
            log.warning("events.amqp_park_failed", error=str(exc) or type(exc).__name__)
            with contextlib.suppress(*BROKER_ERRORS):
                await message.nack(requeue=True)
            return False
        log.warning(
            "events.amqp_invalid",
            routing_key=message.routing_key,
            message_id=message.message_id,
            reason=reason[:200],
        )
        return True
