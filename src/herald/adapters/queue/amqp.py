"""The ``amqp`` queue: RabbitMQ quorum queues per channel and priority lane (aio-pika).

Layout, for ``prefix`` ``herald`` and the channel ``email``::

    herald.q.email.critical   herald.q.email.high   herald.q.email.normal   herald.q.email.low
        durable quorum queues; x-delivery-limit; dead-lettered (at-least-once) to
    herald.dlq.email

A message is persistent and carries up to ``ids_per_message`` delivery ids of one lane: the relay
publishes a batch of due rows as a few messages, not one each (publishing and consuming a message
cost ~0.3 ms of the one core's time; per delivery that was most of the event loop's time when
draining). The database stays the source of truth; what the broker queues share (lanes,
buffers, the claim through ``Store.claim_ids``, the hand-over) is :mod:`.broker`.

**Claim.** Each worker process consumes the lanes of its channels with manual acks and a bounded
prefetch (one consumer per lane, so a backlog in ``low`` never fills the window of ``critical``).
``lanes`` narrows that per channel: a process that sends only the critical and high lanes never
receives a bulk message, and a bulk sender never holds a critical one unacked. A message is
acked only once all its ids were claimed (or are no longer claimable), after that transaction
committed. When the store is down the messages stay in this process's buffer (unacked, not
requeued: that would spend their delivery limit) and the next claim tries again. A worker that
dies after the ack and before sending is covered by the lease: ``reclaim_expired_leases`` puts
the delivery back to ``retrying`` and, the outbox being on, writes a new outbox row.

Delayed retries are outbox rows due later, not per-tier delay queues (:mod:`.broker` says why).

**Dead letters.** ``x-delivery-limit`` catches a message that keeps coming back because the
consumers holding it die (a crash loop). Such a message is dead-lettered (at-least-once) to the
channel's dead-letter queue, which this class also consumes: the event is logged as an error and
the delivery, if still claimable, gets an outbox row ``dead_letter_delay`` seconds later — the
database's retry budget, not the broker, decides when a delivery is dead, and the delay turns a
crash loop into a slow one.

``wake`` is local to the process (a message arriving wakes the waiters of its channel; the
broker's push is the cross-process wake-up). Routers are woken across processes through
PostgreSQL ``LISTEN``/``NOTIFY`` when the database is PostgreSQL (``wakeups_db``): a bare
``herald api`` wakes the workers' routers for what it accepted (:mod:`.pg_notify`).
Broker errors become ``ServiceUnavailable``; the robust connection reconnects by itself and
restores consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

try:
    import aio_pika
    from aio_pika import exceptions as amqp_errors
    from aio_pika.abc import (
        AbstractChannel,
        AbstractIncomingMessage,
        AbstractQueue,
        AbstractRobustChannel,
        AbstractRobustConnection,
    )
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    from herald.domain.errors import ConfigurationError

    raise ConfigurationError(
        "queue.url is amqp:// but aio-pika is not installed: pip install 'herald[rabbitmq]'"
    ) from exc

from herald.adapters.queue.broker import RANKS, BrokerQueue, Buffered, Lanes, body_ids, lane_name
from herald.adapters.queue.wakeups import CrossProcessWakeups
from herald.adapters.store.database import Database
from herald.domain.errors import ConfigurationError, HeraldError, ServiceUnavailable
from herald.ports import Clock, OutboxItem, Store

log = structlog.get_logger("herald.queue.amqp")

# What a broker or its connection can throw at us; everything else is a bug and propagates.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    amqp_errors.AMQPError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aiormq: "writer is None" and friends while the connection is down
)

_CONSUME_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, HeraldError)

lane_queue = lane_name  # herald.q.<channel>.<priority>


def dead_letter_queue(prefix: str, channel: str) -> str:
    return f"{prefix}.dlq.{channel}"


def lane_arguments(prefix: str, channel: str, delivery_limit: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(prefix, channel),
        # At-least-once dead-lettering (quorum queues) needs reject-publish overflow.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


def broker_error(exc: BaseException, doing: str) -> HeraldError:
    """Translate an aio-pika/aiormq error at the boundary."""
    if isinstance(exc, amqp_errors.ProbableAuthenticationError | amqp_errors.AuthenticationError):
        return ConfigurationError(f"queue.url: RabbitMQ refused the credentials ({doing})")
    if isinstance(exc, amqp_errors.ChannelPreconditionFailed):
        return ConfigurationError(f"RabbitMQ refused a declaration ({doing}): {exc}")
    reason = str(exc) or type(exc).__name__
    return ServiceUnavailable(f"RabbitMQ unavailable ({doing}): {reason}")


async def connect(
    url: str, *, name: str, timeout: float, reconnect_interval: float
) -> AbstractRobustConnection:
    try:
        return await aio_pika.connect_robust(
            url,
            timeout=timeout,
            reconnect_interval=reconnect_interval,
            client_properties={"connection_name": name},
        )
    except BROKER_ERRORS as exc:
        raise broker_error(exc, "connecting") from exc


@dataclass(eq=False)
class _Message(Buffered):
    """A delivered message's ids; ``message`` is None for ids this process routed itself
    (:meth:`AmqpQueue.hand_over`: nothing to ack)."""

    message: AbstractIncomingMessage | None = None


@dataclass(eq=False, kw_only=True)
class _Lanes(Lanes[_Message]):
    """One AMQP channel per lane: delivery tags then follow each lane's buffer, whose front is
    always taken first, so one ``ack(multiple=True)`` acks exactly the messages a claim finished.
    """

    amqp: list[AbstractChannel] = field(default_factory=list)  # per lane, then the dead letters'


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    """A message whose channel closed (broker restart, lost connection) cannot be acked; the
    broker has requeued it. aio-pika raises instead of answering once the channel is gone."""
    try:
        return bool(message.channel.is_closed)
    except aio_pika.exceptions.ChannelInvalidStateError:
        return True


class AmqpQueue(CrossProcessWakeups, BrokerQueue[_Message, _Lanes]):
    kind = "amqp"
    _log = log

    def __init__(
        self,
        url: str,
        store: Store,
        clock: Clock | None = None,
        *,
        prefix: str = "herald",
        prefetch: int = 64,
        ids_per_message: int = 50,
        delivery_limit: int = 20,
        dead_letter_delay: float = 60.0,
        early: float = 0.5,
        publish_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
        lanes: Mapping[str, Collection[int]] | None = None,
        wakeups_db: Database | None = None,
    ) -> None:
        super().__init__(store, clock, prefix, prefetch, ids_per_message, early, publish_timeout, lanes)
        self.url = url
        self._wakeups_db = wakeups_db  # PostgreSQL: routers' wake-ups across processes
        self.delivery_limit = delivery_limit
        self.dead_letter_delay = dead_letter_delay
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        self._connection: AbstractRobustConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._publisher: AbstractRobustChannel | None = None
        self._declared: set[str] = set()  # channels whose queues this process declared

    # Connection ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect early so that bad credentials fail at start; an unreachable broker does not:
        the outbox keeps everything until it is back."""
        if self._wakeups_db is not None:
            await self._start_wakeups(self._wakeups_db, self.signals, on_channel=self._remote_wake)
        await super().start()

    async def _connect(self) -> AbstractRobustConnection:
        if self._connection is not None:
            return self._connection
        async with self._connect_lock:
            if self._closed:
                raise ServiceUnavailable("the queue is closed")
            if self._connection is None:
                self._connection = await connect(
                    self.url,
                    name="herald-queue",
                    timeout=self.connect_timeout,
                    reconnect_interval=self.reconnect_interval,
                )
            return self._connection

    async def close(self) -> None:
        self._closed = True
        await self._close_wakeups()
        for task in list(self._starting.values()):
            task.cancel()
        conn, self._connection = self._connection, None
        self._lanes.clear()
        self._publisher = None
        if conn is not None:
            # Unacked messages in our buffers go back to their queues with the connection.
            with contextlib.suppress(*BROKER_ERRORS):
                await conn.close()

    async def _declare(
        self, amqp: AbstractChannel, channel: str
    ) -> tuple[AbstractQueue, list[AbstractQueue]]:
        """Declare the channel's dead-letter queue and lanes (idempotent); return them."""
        try:
            dlq = await amqp.declare_queue(
                dead_letter_queue(self.prefix, channel), durable=True, arguments=QUORUM
            )
            args = lane_arguments(self.prefix, channel, self.delivery_limit)
            lanes = [
                await amqp.declare_queue(lane_queue(self.prefix, channel, rank), durable=True, arguments=args)
                for rank in RANKS
            ]
        except BROKER_ERRORS as exc:
            raise broker_error(exc, f"declaring the queues of {channel}") from exc
        return dlq, lanes

    # Publishing (the relay) ------------------------------------------------------------------
    async def _publisher_channel(self) -> AbstractRobustChannel:
        if self._publisher is None:
            conn = await self._connect()
            try:
                channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            except BROKER_ERRORS as exc:
                raise broker_error(exc, "opening a channel") from exc
            self._publisher = channel
        assert self._publisher is not None
        return self._publisher

    async def publish(self, items: Sequence[OutboxItem]) -> None:
        """Publish the items' ids as a few messages per lane and return once the broker
        confirmed every one.

        Raises ServiceUnavailable when any was not confirmed (the caller keeps its rows and
        publishes again: a duplicate message is harmless, its claim finds nothing to do).
        """
        if not items:
            return
        amqp = await self._publisher_channel()
        for channel in sorted({i.channel for i in items} - self._declared):
            await self._declare(amqp, channel)
            self._declared.add(channel)
        exchange = amqp.default_exchange
        messages = self._batches(items)

        async def one(routing_key: str, ids: list[str]) -> None:
            message = aio_pika.Message(
                "\n".join(ids).encode(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="text/plain",
            )
            await exchange.publish(
                message, routing_key=routing_key, mandatory=True, timeout=self.publish_timeout
            )

        outcomes = await asyncio.gather(*(one(key, ids) for _, key, ids in messages), return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        for (channel, _, ids), o in zip(messages, outcomes, strict=True):
            if o is None:
                self.published[channel] += len(ids)
        if failed:
            if any(isinstance(e, amqp_errors.PublishError) for e in failed):
                self._declared.clear()  # unroutable: a queue was deleted under us; declare again
            for e in failed:
                if not isinstance(e, BROKER_ERRORS):
                    raise e
            raise broker_error(failed[0], f"publishing {len(failed)} of {len(messages)} messages")

    # Consuming -------------------------------------------------------------------------------------
    def _stale(self, lanes: _Lanes) -> bool:
        """The connection is back but a lane's channel is not: its restore failed (a broker
        restart can refuse a queue while its quorum elects a leader). Consume afresh."""
        conn = self._connection
        if conn is None or conn.is_closed:
            return False  # still reconnecting: the robust channels come back with it
        return any(ch.is_closed for ch in lanes.amqp)

    async def _consume(self, channel: str) -> _Lanes:
        lanes = self._lanes.get(channel)
        if lanes is not None and not self._stale(lanes):
            return lanes
        lock = self._lane_locks.setdefault(channel, asyncio.Lock())
        async with lock:
            lanes = self._lanes.get(channel)
            if lanes is not None and not self._stale(lanes):
                return lanes
            if lanes is not None:
                log.warning("queue.consumers_restarted", channel=channel)
                self._lanes.pop(channel, None)
                for old in lanes.amqp:
                    with contextlib.suppress(*BROKER_ERRORS):
                        await old.close()
            conn = await self._connect()
            lanes = _Lanes()
            try:
                for rank in [*self.lanes.get(channel, RANKS), None]:
                    amqp = await conn.channel()
                    lanes.amqp.append(amqp)
                    await amqp.set_qos(prefetch_count=self.prefetch)
                    # Declared on its (robust) channel, a queue and its consumer are restored
                    # with the channel after a reconnect.
                    dlq, queues = await self._declare(amqp, channel)
                    if rank is None:
                        await dlq.consume(functools.partial(self._on_dead_letter, channel))
                    else:
                        await queues[rank].consume(functools.partial(self._on_message, lanes, channel, rank))
            except _CONSUME_ERRORS as exc:
                for opened in lanes.amqp:
                    with contextlib.suppress(*BROKER_ERRORS):
                        await opened.close()
                if isinstance(exc, HeraldError):
                    raise
                raise broker_error(exc, f"consuming {channel}") from exc
            self._lanes[channel] = lanes
            return lanes

    async def _on_message(
        self, lanes: _Lanes, channel: str, rank: int, message: AbstractIncomingMessage
    ) -> None:
        ids = body_ids(message.body)
        if not ids:  # nothing to claim (not one of ours): out of the way
            with contextlib.suppress(*BROKER_ERRORS):
                await message.ack()
            return
        lanes.buffers[rank].append(_Message(ids, message=message))
        self.received[channel] += len(ids)
        self.signals.wake(channel)

    async def _on_dead_letter(self, channel: str, message: AbstractIncomingMessage) -> None:
        ids = body_ids(message.body)
        delivery_id = ",".join(ids)
        now = self._now()
        try:
            requeued = await self.store.requeue_ids(ids, due_at=now + self.dead_letter_delay, now=now)
        except HeraldError as exc:
            log.warning(
                "queue.dead_letter_deferred", channel=channel, delivery_id=delivery_id, error=exc.detail
            )
            await asyncio.sleep(1.0)
            with contextlib.suppress(*BROKER_ERRORS):
                await message.nack(requeue=True)
            return
        headers = message.headers or {}
        log.error(
            "queue.dead_lettered",
            channel=channel,
            delivery_id=delivery_id,
            reason=str(headers.get("x-first-death-reason", "")),
            requeued_in_s=self.dead_letter_delay if requeued else None,
        )
        with contextlib.suppress(*BROKER_ERRORS):
            await message.ack()

    # The claim's broker side -----------------------------------------------------------------
    def _gone(self, entry: _Message) -> bool:
        # The broker requeued it with its channel; it comes again.
        return entry.message is not None and _channel_closed(entry.message)

    async def _finished(self, lanes: _Lanes, done: Sequence[tuple[int, _Message]]) -> None:
        """Ack, now that the claim is committed, the messages all of whose ids are claimed: one
        multiple-ack per lane, for the last such message."""
        last: dict[int, AbstractIncomingMessage] = {}
        for rank, entry in done:
            if entry.message is not None:
                last[rank] = entry.message
        for message in last.values():
            with contextlib.suppress(*BROKER_ERRORS):
                await message.ack(multiple=True)

    def _handed(self, ids: list[str]) -> _Message:
        return _Message(ids)

    def _wake_handed(self, channel: str, rank: int) -> None:
        self.signals.wake(channel)  # as a message arriving does: every waiter of the channel

    # Wake-ups --------------------------------------------------------------------------------------
    def wake(self, channel: str | None = None, top_rank: int = 0) -> None:
        super().wake(channel, top_rank)
        if top_rank == 0 and channel is not None:
            # Critical work this process may not relay (a bulk worker's router routed it, its
            # relay publishes the bulk lanes only): the relays of the other processes publish
            # it now rather than at their next poll.
            self._notify_channel(channel)

    def _remote_wake(self, channel: str | None) -> None:
        """Another process made work claimable: its outbox rows may be ours to relay."""
        for listener in self._wake_listeners:
            listener(channel)
