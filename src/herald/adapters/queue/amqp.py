"""The ``amqp`` queue: RabbitMQ quorum queues per channel and priority lane (aio-pika).

Layout, for ``prefix`` ``herald`` and the channel ``email``::

    herald.q.email.critical   herald.q.email.high   herald.q.email.normal   herald.q.email.low
        durable quorum queues; x-delivery-limit; dead-lettered (at-least-once) to
    herald.dlq.email

A message is persistent and its body is up to ``ids_per_message`` delivery ids of one lane, one
per line: the relay publishes a batch of due rows as a few messages, not one each (publishing and
consuming a message cost ~0.3 ms of the one core's time; per delivery that was most of the event
loop's time when draining). The database stays the source of
truth: messages only say "look at this delivery". They are written by the transactional outbox
(:mod:`herald.adapters.store.sql_outbox`) in the transaction that made the delivery claimable
and published after commit, with publisher confirms, by the relay
(:mod:`herald.adapters.queue.outbox_relay`).

**Claim.** Each worker process consumes the lanes of its channels with manual acks and a bounded
prefetch (one consumer per lane, so a backlog in ``low`` never fills the window of ``critical``).
``lanes`` narrows that per channel: a process that sends only the critical and high lanes never
receives a bulk message, and a bulk sender never holds a critical one unacked.
``claim`` takes buffered ids from the highest lane down, up to its limit (a message's ids may be
split between claims), claims those ids in the store (queued/retrying and due → ``sending``
under the lease, exactly the ``sql`` queue's semantics) and acks a message only once all its ids
were claimed, after that transaction committed. Ids that are no longer claimable (sent, cancelled,
already claimed through a duplicate message) are acked away. When the store is down the messages
stay in this process's buffer (unacked, not requeued: that would spend their delivery limit) and
the next claim tries again. A worker that dies after the ack and before sending is covered by
the lease: ``reclaim_expired_leases`` puts the delivery back to ``retrying`` and, the outbox being
on, writes a new outbox row.

**Delayed retries go through the database's due times, not through per-tier delay queues.**
A retry is an outbox row whose ``due_at`` is the retry time; the relay publishes only due rows.
Arguments: (1) the retry schedule is configurable, has jitter and honours ``Retry-After``, so
delays are arbitrary — TTL delay queues need one queue per distinct delay (or the unsupported
delayed-message plugin) and per-queue TTLs only expire from the head, so a message with a short
delay waits behind a long one; (2) the delivery row already holds ``due_at``, and cancel, expiry
and replay change it in one transaction — a message parked in a delay queue could not be
revoked and would later be acked away anyway; (3) the broker only holds work that is due now, so
queue depths mean "waiting to be sent" and the lanes stay short. The cost is one indexed outbox
query per relay pass.

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
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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

from herald.adapters.queue.signals import Signals
from herald.adapters.store.database import Database
from herald.domain.errors import ConfigurationError, HeraldError, ServiceUnavailable
from herald.domain.models import Delivery, Priority
from herald.ports import Clock, OutboxItem, Store

if TYPE_CHECKING:
    from herald.adapters.queue.pg_notify import PgWakeups

log = structlog.get_logger("herald.queue.amqp")

RANKS = tuple(sorted(p.rank for p in Priority))
# What a broker or its connection can throw at us; everything else is a bug and propagates.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    amqp_errors.AMQPError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aiormq: "writer is None" and friends while the connection is down
)

_CONSUME_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, HeraldError)


def lane_queue(prefix: str, channel: str, rank: int) -> str:
    return f"{prefix}.q.{channel}.{Priority.from_rank(rank).value}"


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


@dataclass
class _Buffered:
    """A delivered message and the ids of it not claimed yet; ``message`` is None for ids this
    process routed itself (:meth:`AmqpQueue.hand_over`: nothing to ack)."""

    message: AbstractIncomingMessage | None
    ids: list[str]
    taken: int = 0  # ids[:taken] are claimed

    @property
    def left(self) -> int:
        return len(self.ids) - self.taken


def message_ids(body: bytes) -> list[str]:
    return [i for i in body.decode(errors="replace").split("\n") if i]


@dataclass
class _Lanes:
    """The consumers of one channel in this process and what they delivered so far.

    One AMQP channel per lane: delivery tags then follow each lane's buffer, whose front is
    always taken first, so one ``ack(multiple=True)`` acks exactly the messages a claim finished.
    """

    amqp: list[AbstractChannel]  # per lane, then the dead-letter consumer's
    buffers: list[deque[_Buffered]] = field(default_factory=lambda: [deque() for _ in RANKS])
    claiming: asyncio.Lock = field(default_factory=asyncio.Lock)


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    """A message whose channel closed (broker restart, lost connection) cannot be acked; the
    broker has requeued it. aio-pika raises instead of answering once the channel is gone."""
    try:
        return bool(message.channel.is_closed)
    except aio_pika.exceptions.ChannelInvalidStateError:
        return True


class AmqpQueue:
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
        self.url = url
        self._wakeups_db = wakeups_db  # PostgreSQL: routers' wake-ups across processes
        self._wakeups: PgWakeups | None = None
        self._route_listeners: list[Callable[[bool], None]] = []
        # channel -> the lane ranks this process consumes (absent: every lane)
        self.lanes = {ch: tuple(sorted(ranks)) for ch, ranks in (lanes or {}).items()}
        self.store = store
        self.clock = clock
        self.prefix = prefix
        self.prefetch = prefetch
        self.ids_per_message = max(1, ids_per_message)
        self.delivery_limit = delivery_limit
        self.dead_letter_delay = dead_letter_delay
        self.early = early  # a message up to this much ahead of its due time is claimed anyway
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        self.signals = Signals()
        self.received: Counter[str] = Counter()  # channel -> delivery ids our consumers received
        self.published: Counter[str] = Counter()  # channel -> delivery ids the broker confirmed
        self.handed_over: Counter[str] = Counter()  # channel -> ids routed here, claimed without the broker
        self._connection: AbstractRobustConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._publisher: AbstractRobustChannel | None = None
        self._declared: set[str] = set()  # channels whose queues this process declared
        self._lanes: dict[str, _Lanes] = {}
        self._lane_locks: dict[str, asyncio.Lock] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._wake_listeners: list[Callable[[str | None], None]] = []
        self._consume_failing: set[str] = set()  # channels whose consumer could not start
        self._closed = False

    def _now(self) -> float:
        return self.clock.now() if self.clock is not None else time.time()

    # Connection ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect early so that bad credentials fail at start; an unreachable broker does not:
        the outbox keeps everything until it is back."""
        if self._wakeups_db is not None and self._wakeups is None:
            from herald.adapters.queue.pg_notify import start_wakeups  # noqa: PLC0415 - needs psycopg

            self._wakeups = await start_wakeups(
                self._wakeups_db, self.signals, self._route_woken, on_channel=self._remote_wake
            )
        try:
            await self._connect()
        except ServiceUnavailable as exc:
            log.warning("queue.broker_unavailable", detail=exc.detail)

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
        if self._wakeups is not None:
            await self._wakeups.close()
            self._wakeups = None
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

    def _messages(self, items: Sequence[OutboxItem]) -> list[tuple[str, str, list[str]]]:
        """Group items into (channel, routing key, ids) of at most ``ids_per_message`` ids, in
        the items' order within each lane."""
        lanes: dict[tuple[str, int], list[str]] = {}
        for item in items:
            lanes.setdefault((item.channel, item.priority), []).append(item.delivery_id)
        out = []
        n = self.ids_per_message
        for (channel, rank), ids in lanes.items():
            key = lane_queue(self.prefix, channel, rank)
            out += [(channel, key, ids[i : i + n]) for i in range(0, len(ids), n)]
        return out

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
        messages = self._messages(items)

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
            lanes = _Lanes([])
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
        ids = message_ids(message.body)
        if not ids:  # nothing to claim (not one of ours): out of the way
            with contextlib.suppress(*BROKER_ERRORS):
                await message.ack()
            return
        lanes.buffers[rank].append(_Buffered(message, ids))
        self.received[channel] += len(ids)
        self.signals.wake(channel)

    async def _on_dead_letter(self, channel: str, message: AbstractIncomingMessage) -> None:
        ids = message_ids(message.body)
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

    # The Queue port ----------------------------------------------------------------------------
    async def claim(
        self,
        channel: str,
        *,
        owner: str,
        limit: int,
        max_rank: int,
        lease: float,
        now: float,
        min_rank: int = 0,
    ) -> list[Delivery]:
        lanes = await self._consume(channel)
        ranks = RANKS[min_rank : max_rank + 1]
        async with lanes.claiming:  # one claim per channel at a time: acks cover a buffer's front
            return await self._claim(lanes, owner=owner, limit=limit, ranks=ranks, lease=lease, now=now)

    async def _claim(
        self, lanes: _Lanes, *, owner: str, limit: int, ranks: Sequence[int], lease: float, now: float
    ) -> list[Delivery]:
        out: list[Delivery] = []
        while len(out) < limit:
            # What to take: (rank, buffered message, how many of its ids). Nothing changes in the
            # buffers until the claim committed, so a failed claim leaves them as they were.
            plan: list[tuple[int, _Buffered, int]] = []
            ids: list[str] = []
            for rank in ranks:
                buffer = lanes.buffers[rank]
                for entry in list(buffer):
                    if len(out) + len(ids) >= limit:
                        break
                    if entry.message is not None and _channel_closed(entry.message):
                        buffer.remove(entry)  # the broker requeued it with its channel; it comes again
                        continue
                    n = min(entry.left, limit - len(out) - len(ids))
                    plan.append((rank, entry, n))
                    ids += entry.ids[entry.taken : entry.taken + n]
            if not ids:
                break
            # The time of this pass, not of the call: messages keep arriving while a claim
            # runs, for deliveries routed after it began. With the call's time they looked not
            # yet due, went back to the outbox, were published again and came back, for as
            # long as the loop was fed: a worker that sent nothing for minutes while its relay
            # republished the same 20,000 ids five times (integration test, scale-out).
            now = max(now, self._now())
            got = await self.store.claim_ids(ids, owner=owner, lease=lease, now=now, early=self.early)
            out.extend(got)
            # Acked only now that the claim is committed, and only messages all of whose ids
            # are claimed: one multiple-ack per lane, for the last such message. A lost ack
            # redelivers the message, whose claim then finds its deliveries in `sending`.
            finished: dict[int, AbstractIncomingMessage] = {}
            for rank, entry, n in plan:
                entry.taken += n
                if entry.left == 0:
                    front = lanes.buffers[rank].popleft()  # plans take each buffer from its front
                    assert front is entry
                    if entry.message is not None:
                        finished[rank] = entry.message
            for message in finished.values():
                with contextlib.suppress(*BROKER_ERRORS):
                    await message.ack(multiple=True)
        out.sort(key=lambda x: (x.priority.rank, x.due_at))
        return out

    async def extend(self, delivery_ids: Sequence[str], *, owner: str, until: float) -> None:
        await self.store.extend_leases(delivery_ids, owner=owner, until=until)

    def add_wake_listener(self, listener: Callable[[str | None], None]) -> None:
        """Also call ``listener`` on every wake (the outbox relay: new rows may be due)."""
        self._wake_listeners.append(listener)

    def wake_routers(self, urgent: bool) -> None:
        """New notifications for the routers of the other processes (PostgreSQL: NOTIFY)."""
        if self._wakeups is not None:
            self._wakeups.notify_route(urgent)

    def add_route_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(urgent)`` when another process asks routers to wake."""
        self._route_listeners.append(listener)

    def _route_woken(self, urgent: bool) -> None:
        for listener in self._route_listeners:
            listener(urgent)

    def wake_local(self, channel: str) -> None:
        self.signals.wake(channel)

    def hand_over(self, deliveries: Sequence[Delivery]) -> None:
        """Buffer the ids of critical/high deliveries routed by this process for its own
        consumers of their lanes, as if the broker had delivered them: the next claim takes
        them (under the same lease) without the relay's pass, the publish and the consumer's
        round trip. Their outbox rows stay: if this process dies first, the relay publishes
        them as always; otherwise the broker's message, when it comes, finds them claimed and
        is acked away."""
        now = self._now()
        grouped: dict[tuple[str, int], list[str]] = {}
        for d in deliveries:
            rank = d.priority.rank
            consumed = d.channel in self._lanes and rank in self.lanes.get(d.channel, RANKS)
            if consumed and d.due_at <= now + self.early:
                grouped.setdefault((d.channel, rank), []).append(d.id)
        for (channel, rank), ids in grouped.items():
            self._lanes[channel].buffers[rank].append(_Buffered(None, ids))
            self.handed_over[channel] += len(ids)
            self.signals.wake(channel)

    def wake(self, channel: str | None = None, top_rank: int = 0) -> None:
        self.signals.wake(channel, top_rank)
        for listener in self._wake_listeners:
            listener(channel)
        if top_rank == 0 and channel is not None and self._wakeups is not None:
            # Critical work this process may not relay (a bulk worker's router routed it, its
            # relay publishes the bulk lanes only): the relays of the other processes publish
            # it now rather than at their next poll.
            self._wakeups.notify(channel)

    def _remote_wake(self, channel: str | None) -> None:
        """Another process made work claimable: its outbox rows may be ours to relay."""
        for listener in self._wake_listeners:
            listener(channel)

    async def wait(self, channel: str, timeout: float, max_rank: int = 3) -> None:
        if channel not in self._lanes and channel not in self._starting:
            # Start consuming in the background: a wake that comes meanwhile is not missed.
            task = asyncio.create_task(self._consume_quietly(channel), name=f"herald-amqp-consume-{channel}")
            self._starting[channel] = task
            task.add_done_callback(lambda _: self._starting.pop(channel, None))
        # Woken by a message arriving (or a local wake), never by messages already buffered:
        # those may be of lanes the caller cannot take now, and waking on them would spin.
        await self.signals.wait(channel, timeout, max_rank)

    async def _consume_quietly(self, channel: str) -> None:
        try:
            await self._consume(channel)
        except HeraldError as exc:  # the broker is away: the next wait tries again
            # Said once per outage (every wait tries again), so that a worker that cannot
            # consume is never silent about it.
            if channel not in self._consume_failing:
                self._consume_failing.add(channel)
                log.warning("queue.consume_failed", channel=channel, error=exc.detail)
            else:
                log.debug("queue.consume_failed", channel=channel, error=exc.detail)
            return
        except Exception:  # a bug must not go unseen; the next wait tries again
            log.exception("queue.consume_crashed", channel=channel)
            return
        if channel in self._consume_failing:
            self._consume_failing.discard(channel)
            log.info("queue.consume_recovered", channel=channel)
