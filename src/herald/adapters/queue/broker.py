"""What the broker queues (``amqp``, ``kafka``) share: lanes, buffers, the claim around the store.

Both keep the database the source of truth. A broker message (a RabbitMQ message, a Kafka
record) only says "look at these deliveries": its body is up to ``ids_per_message`` delivery
ids of one lane, one per line. The transactional outbox writes them in the transaction that
made the deliveries claimable; the relay (:mod:`herald.adapters.queue.outbox_relay`) publishes
them after commit through the queue's ``publish``.

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

The lanes of a channel are named ``{prefix}.q.{channel}.{priority}`` (a queue, a topic). Each
process consumes the lanes it sends (``lanes``: channel -> ranks; absent: every lane) into one
buffer per lane, and :class:`BrokerQueue` does the rest the same way for both brokers:

- ``claim`` takes buffered ids from the highest lane down, up to its limit (a message's ids may
  be split between claims), claims them in the store (``Store.claim_ids``: queued/retrying and
  due -> ``sending`` under the lease, exactly the ``sql`` queue's semantics) and only once that
  transaction committed tells the broker adapter which messages are finished (every id claimed
  or no longer claimable): it acks them (amqp) or commits their offsets (kafka). Each buffer is
  taken from its front, so finished messages are always a buffer's oldest. When the store is
  down nothing changes in the buffers and the next claim tries again.
- ``hand_over`` buffers the critical/high deliveries this process routed itself for its own
  consumers of their lanes, as if the broker had delivered them (nothing to ack or commit).
- ``wake``/``wait`` are local to the process (:class:`Signals`); a consumer starts in the
  background at the first ``wait`` of a channel, so a wake that comes meanwhile is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from herald.adapters.queue.signals import Signals
from herald.domain.errors import HeraldError, ServiceUnavailable
from herald.domain.models import Delivery, Priority
from herald.ports import Clock, OutboxItem, Store

RANKS = tuple(sorted(p.rank for p in Priority))


def lane_name(prefix: str, channel: str, rank: int) -> str:
    """The queue (amqp) or topic (kafka) of a channel's priority lane."""
    return f"{prefix}.q.{channel}.{Priority.from_rank(rank).value}"


def body_ids(body: bytes | None) -> list[str]:
    """The delivery ids of a message's body (one a line; blank lines skipped)."""
    return [i for i in (body or b"").decode(errors="replace").split("\n") if i]


@dataclass(eq=False)
class Buffered:
    """A message's ids not claimed yet (a subclass says where it came from, to ack it)."""

    ids: list[str]
    taken: int = 0  # ids[:taken] are claimed

    @property
    def left(self) -> int:
        return len(self.ids) - self.taken


E = TypeVar("E", bound=Buffered)


@dataclass(eq=False)
class Lanes(Generic[E]):
    """One channel's consumers in this process and what they delivered so far, per lane."""

    buffers: list[deque[E]] = field(default_factory=lambda: [deque() for _ in RANKS])
    # One claim per channel at a time: what a claim finishes is always a buffer's front.
    claiming: asyncio.Lock = field(default_factory=asyncio.Lock)


L = TypeVar("L", bound=Lanes[Any])


class BrokerQueue(ABC, Generic[E, L]):
    """The Queue port over a broker whose messages carry delivery ids (see the module doc).

    A subclass connects, publishes and consumes (:meth:`_consume` fills ``_lanes[channel]``'s
    buffers, wakes :attr:`signals`), and says what a finished message means (:meth:`_finished`).
    """

    kind: ClassVar[str]  # "amqp", "kafka": in task names
    _log: ClassVar[Any]  # the adapter's structlog logger
    consume_retry_pause: ClassVar[float] = 0.0  # after a failed start, before the next wait tries

    def __init__(
        self,
        store: Store,
        clock: Clock | None,
        prefix: str,
        prefetch: int,
        ids_per_message: int,
        early: float,
        publish_timeout: float,
        lanes: Mapping[str, Collection[int]] | None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.prefix = prefix
        self.prefetch = prefetch
        self.ids_per_message = max(1, ids_per_message)
        self.early = early  # a message up to this much ahead of its due time is claimed anyway
        self.publish_timeout = publish_timeout
        # channel -> the lane ranks this process consumes (absent: every lane)
        self.lanes = {ch: tuple(sorted(ranks)) for ch, ranks in (lanes or {}).items()}
        self.signals = Signals()
        self.received: Counter[str] = Counter()  # channel -> delivery ids our consumers received
        self.published: Counter[str] = Counter()  # channel -> delivery ids the broker confirmed
        self.handed_over: Counter[str] = Counter()  # channel -> ids routed here, claimed without the broker
        self._lanes: dict[str, L] = {}  # channel -> its consumers in this process
        self._lane_locks: dict[str, asyncio.Lock] = {}  # channel -> held while starting them
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._wake_listeners: list[Callable[[str | None], None]] = []
        self._consume_failing: set[str] = set()  # channels whose consumer could not start
        self._closed = False

    def _now(self) -> float:
        return self.clock.now() if self.clock is not None else time.time()

    # What a broker adapter implements -------------------------------------------------------
    @abstractmethod
    async def _connect(self) -> object:
        """Connect to the broker (once); ServiceUnavailable when it cannot be reached."""

    @abstractmethod
    async def _consume(self, channel: str) -> L:
        """The consumers of ``channel``'s lanes in this process, started if they are not."""

    @abstractmethod
    async def _finished(self, lanes: L, done: Sequence[tuple[int, E]]) -> None:
        """``done``: (rank, entry) whose ids were all claimed (committed), oldest first per lane."""

    @abstractmethod
    def _handed(self, ids: list[str]) -> E:
        """A buffer entry for ids this process routed itself (nothing to ack)."""

    def _gone(self, entry: E) -> bool:
        """True for an entry the broker takes back (it comes again): dropped unclaimed."""
        return False

    async def _claimed(self, lanes: L) -> None:
        """After each claim, outside the channel's claim lock."""

    def _wake_handed(self, channel: str, rank: int) -> None:
        self.signals.wake(channel, rank)

    # Connection --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect early so that bad credentials fail at start; an unreachable broker does not:
        the outbox keeps everything until it is back."""
        try:
            await self._connect()
        except ServiceUnavailable as exc:
            self._log.warning("queue.broker_unavailable", detail=exc.detail)

    def _batches(self, items: Sequence[OutboxItem]) -> list[tuple[str, str, list[str]]]:
        """Group items into (channel, lane, ids) of at most ``ids_per_message`` ids, in the
        items' order within each lane."""
        lanes: dict[tuple[str, int], list[str]] = {}
        for item in items:
            lanes.setdefault((item.channel, item.priority), []).append(item.delivery_id)
        out = []
        n = self.ids_per_message
        for (channel, rank), ids in lanes.items():
            name = lane_name(self.prefix, channel, rank)
            out += [(channel, name, ids[i : i + n]) for i in range(0, len(ids), n)]
        return out

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
        async with lanes.claiming:
            out = await self._claim(lanes, owner=owner, limit=limit, ranks=ranks, lease=lease, now=now)
        await self._claimed(lanes)
        return out

    async def _claim(
        self, lanes: L, *, owner: str, limit: int, ranks: Sequence[int], lease: float, now: float
    ) -> list[Delivery]:
        out: list[Delivery] = []
        while len(out) < limit:
            # What to take: (rank, entry, how many of its ids). Nothing changes in the buffers
            # until the claim committed, so a failed claim leaves them as they were.
            plan: list[tuple[int, E, int]] = []
            ids: list[str] = []
            for rank in ranks:
                buffer = lanes.buffers[rank]
                for entry in list(buffer):
                    if len(out) + len(ids) >= limit:
                        break
                    if self._gone(entry):
                        buffer.remove(entry)
                        continue
                    n = min(entry.left, limit - len(out) - len(ids))
                    plan.append((rank, entry, n))
                    ids += entry.ids[entry.taken : entry.taken + n]
            if not plan:
                break
            if ids:
                # The time of this pass, not of the call: messages keep arriving while a claim
                # runs, for deliveries routed after it began. With the call's time they looked
                # not yet due, went back to the outbox, were published again and came back, for
                # as long as the loop was fed: a worker that sent nothing for minutes while its
                # relay republished the same 20,000 ids five times (integration test, scale-out).
                now = max(now, self._now())
                got = await self.store.claim_ids(ids, owner=owner, lease=lease, now=now, early=self.early)
                out.extend(got)
            # The claim committed: entries all of whose ids are claimed are finished, in order
            # per lane (each buffer is taken from its front). A lost ack or commit brings the
            # message again; its claim then finds its deliveries in `sending` or done.
            done: list[tuple[int, E]] = []
            for rank, entry, n in plan:
                entry.taken += n
                if entry.left:
                    continue
                buffer = lanes.buffers[rank]
                if buffer and buffer[0] is entry:
                    buffer.popleft()
                    done.append((rank, entry))
                else:  # dropped meanwhile (kafka: a rebalance gave its partition away)
                    with contextlib.suppress(ValueError):
                        buffer.remove(entry)
            await self._finished(lanes, done)
            if not ids:
                break
        out.sort(key=lambda x: (x.priority.rank, x.due_at))
        return out

    async def extend(self, delivery_ids: Sequence[str], *, owner: str, until: float) -> None:
        await self.store.extend_leases(delivery_ids, owner=owner, until=until)

    def add_wake_listener(self, listener: Callable[[str | None], None]) -> None:
        """Also call ``listener`` on every wake (the outbox relay: new rows may be due)."""
        self._wake_listeners.append(listener)

    def wake_local(self, channel: str) -> None:
        self.signals.wake(channel)

    def hand_over(self, deliveries: Sequence[Delivery]) -> None:
        """Buffer the ids of critical/high deliveries routed by this process for its own
        consumers of their lanes, as if the broker had delivered them: the next claim takes
        them (under the same lease) without the relay's pass, the publish and the consumer's
        round trip. Their outbox rows stay: if this process dies first, the relay publishes
        them as always; otherwise the broker's message, when it comes, finds them claimed and
        is finished at once."""
        now = self._now()
        grouped: dict[tuple[str, int], list[str]] = {}
        for d in deliveries:
            rank = d.priority.rank
            consumed = d.channel in self._lanes and rank in self.lanes.get(d.channel, RANKS)
            if consumed and d.due_at <= now + self.early:
                grouped.setdefault((d.channel, rank), []).append(d.id)
        for (channel, rank), ids in grouped.items():
            self._lanes[channel].buffers[rank].append(self._handed(ids))
            self.handed_over[channel] += len(ids)
            self._wake_handed(channel, rank)

    def wake(self, channel: str | None = None, top_rank: int = 0) -> None:
        self.signals.wake(channel, top_rank)
        for listener in self._wake_listeners:
            listener(channel)

    async def wait(self, channel: str, timeout: float, max_rank: int = 3) -> None:
        if channel not in self._lanes and channel not in self._starting:
            # Start consuming in the background: a wake that comes meanwhile is not missed.
            task = asyncio.create_task(
                self._consume_quietly(channel), name=f"herald-{self.kind}-consume-{channel}"
            )
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
                self._log.warning("queue.consume_failed", channel=channel, error=exc.detail)
            else:
                self._log.debug("queue.consume_failed", channel=channel, error=exc.detail)
            if self.consume_retry_pause:
                await asyncio.sleep(self.consume_retry_pause)  # the next wait tries again, not at once
            return
        except Exception:  # a bug must not go unseen; the next wait tries again
            self._log.exception("queue.consume_crashed", channel=channel)
            return
        if channel in self._consume_failing:
            self._consume_failing.discard(channel)
            self._log.info("queue.consume_recovered", channel=channel)
