"""The ``kafka`` queue: a Kafka topic per channel and priority lane (aiokafka).

Layout, for ``prefix`` ``herald`` and the channel ``email``::

    herald.q.email.critical   herald.q.email.high   herald.q.email.normal   herald.q.email.low
        topics of ``partitions`` partitions each (created when missing)
    consumer group herald.g.email.<lanes>   e.g. herald.g.email.critical-high-normal-low

As with ``amqp://``, the database is the source of truth: a record only says "look at these
deliveries". Its value is up to ``ids_per_message`` delivery ids of one lane, one per line, and
its key the first of them (so the records of a lane spread over its partitions). Records are
written by the transactional outbox in the transaction that made the deliveries claimable and
produced after commit, acks=all, by the relay (:mod:`herald.adapters.queue.outbox_relay`); the
relay deletes its rows only once every record was acknowledged, else produces them again later
(a duplicate record is harmless: its claim finds nothing to do).

**Groups.** A worker process consumes, per channel it sends, the lane topics of its lanes
(``herald worker --channels email --lanes critical,high``: ``herald.q.email.critical`` and
``herald.q.email.high`` only) in one consumer group per channel and lane set. Processes with
the same lanes share the partitions; a process that stops or dies gives its partitions to the
others (after the session timeout when it died).

**Claim and commit.** Fetched records wait in a bounded buffer per lane; a lane whose buffer
is full is paused (its partitions are not fetched), so a bulk backlog never holds back the
fetching of critical records, and a consumer of bulk lanes never holds a critical record.
``claim`` takes buffered ids from the highest lane down, up to its limit, claims them in the
store (``Store.claim_ids``: queued/retrying and due -> ``sending`` under the lease) and, once
that transaction committed, marks every record all of whose ids were claimed as finished. A
partition's offset is committed up to its last finished record: records of one partition are
finished in offset order (each buffer is taken from its front), so a committed offset never
passes a record whose deliveries are not claimed. Ids that are no longer claimable (sent,
cancelled, claimed through a duplicate record) are finished too. When the store is down the
records stay buffered, uncommitted, and the next claim tries again. A record redelivered (a
rebalance, a crash before the commit) finds its deliveries claimed or finished and is skipped;
a worker that dies after the commit and before sending is covered by the lease
(``reclaim_expired_leases`` puts the delivery back to ``retrying`` with a new outbox row).

Retries are outbox rows due later (the relay publishes only due rows), exactly as for ``amqp``;
there is no dead-letter topic: the database's retry budget decides when a delivery is dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from herald.adapters.kafka_client import (
    KAFKA_ERRORS,
    KafkaConnection,
    ensure_topics,
    kafka_error,
    lost_offsets,
)
from herald.adapters.queue.signals import Signals
from herald.domain.errors import HeraldError, ServiceUnavailable
from herald.domain.models import Delivery, Priority
from herald.ports import Clock, OutboxItem, Store

log = structlog.get_logger("herald.queue.kafka")

RANKS = tuple(sorted(p.rank for p in Priority))


def lane_topic(prefix: str, channel: str, rank: int) -> str:
    return f"{prefix}.q.{channel}.{Priority.from_rank(rank).value}"


def group_id(prefix: str, channel: str, ranks: Sequence[int]) -> str:
    return f"{prefix}.g.{channel}." + "-".join(Priority.from_rank(r).value for r in sorted(ranks))


def record_ids(value: bytes | None) -> list[str]:
    return [i for i in (value or b"").decode(errors="replace").split("\n") if i]


@dataclass
class _Buffered:
    """A fetched record and the ids of it not claimed yet; ``tp`` is None for ids this process
    routed itself (:meth:`KafkaQueue.hand_over`: nothing to commit)."""

    tp: TopicPartition | None
    offset: int
    ids: list[str]
    taken: int = 0  # ids[:taken] are claimed

    @property
    def left(self) -> int:
        return len(self.ids) - self.taken


@dataclass
class _Consumer:
    """The consumer of one channel's lanes in this process and what it fetched so far."""

    channel: str
    ranks: tuple[int, ...]
    group: str
    consumer: AIOKafkaConsumer
    buffers: list[deque[_Buffered]] = field(default_factory=lambda: [deque() for _ in RANKS])
    claiming: asyncio.Lock = field(default_factory=asyncio.Lock)
    finished: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to commit
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    # What this member committed, kept across rebalances: its disappearance from the group
    # means the broker lost its state (lost_offsets).
    seen: dict[TopicPartition, int] = field(default_factory=dict)
    paused: set[int] = field(default_factory=set)  # ranks whose partitions are paused
    task: asyncio.Task[None] | None = None
    state: str = "starting"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped here
    def __init__(self, queue: KafkaQueue, c: _Consumer) -> None:
        self.queue = queue
        self.c = c

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Commit what is finished before the partitions go, and forget what is buffered of
        # them: the next owner reads it from the committed offsets.
        await self.queue._commit(self.c, only=set(revoked))
        gone = set(revoked)
        for buffer in self.c.buffers:
            kept = [e for e in buffer if e.tp is None or e.tp not in gone]
            self.queue.dropped[self.c.channel] += sum(len(e.ids) for e in buffer if e.tp in gone)
            buffer.clear()
            buffer.extend(kept)
        for tp in gone:
            self.c.finished.pop(tp, None)
            self.c.committed.pop(tp, None)
        self.c.paused.clear()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        for tp in assigned:  # the group's committed offsets: the lag before our first commit
            with contextlib.suppress(*KAFKA_ERRORS):
                committed = await self.c.consumer.committed(tp)
                if committed is not None:
                    self.c.committed[tp] = committed
        log.info(
            "queue.kafka_assigned",
            channel=self.c.channel,
            group=self.c.group,
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
        )


class KafkaQueue:
    def __init__(
        self,
        conn: KafkaConnection,
        store: Store,
        clock: Clock | None = None,
        *,
        prefix: str = "herald",
        partitions: int = 6,
        prefetch: int = 64,
        ids_per_message: int = 50,
        early: float = 0.5,
        session_timeout: float = 10.0,
        publish_timeout: float = 15.0,
        lanes: Mapping[str, Collection[int]] | None = None,
    ) -> None:
        self.conn = conn
        self.store = store
        self.clock = clock
        self.prefix = prefix
        self.partitions = partitions
        self.prefetch = prefetch  # buffered records per lane before the lane is paused
        self.ids_per_message = max(1, ids_per_message)
        self.early = early
        self.session_timeout = session_timeout
        self.publish_timeout = publish_timeout
        # channel -> the lane ranks this process consumes (absent: every lane)
        self.lanes = {ch: tuple(sorted(ranks)) for ch, ranks in (lanes or {}).items()}
        self.signals = Signals()
        self.received: Counter[str] = Counter()  # channel -> delivery ids our consumers fetched
        self.dropped: Counter[str] = Counter()  # ... of them dropped unclaimed when a rebalance took them
        self.published: Counter[str] = Counter()  # channel -> delivery ids the broker acknowledged
        self.handed_over: Counter[str] = Counter()
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._created: set[str] = set()  # channels whose topics exist (as far as we know)
        self._consumers: dict[str, _Consumer] = {}
        self._consumer_locks: dict[str, asyncio.Lock] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._wake_listeners: list[Callable[[str | None], None]] = []
        self._consume_failing: set[str] = set()
        self._closed = False

    def _now(self) -> float:
        return self.clock.now() if self.clock is not None else time.time()

    # Connection ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect the producer early; an unreachable broker is no error: the outbox keeps
        everything until it is back."""
        try:
            await self._producer_started()
        except ServiceUnavailable as exc:
            log.warning("queue.broker_unavailable", detail=exc.detail)

    async def _producer_started(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._producer_lock:
            if self._closed:
                raise ServiceUnavailable("the queue is closed")
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **self.conn.client_args(),
                    acks="all",
                    enable_idempotence=False,
                    linger_ms=2,
                    request_timeout_ms=int(self.publish_timeout * 1000),
                    metadata_max_age_ms=5000,
                )
                try:
                    await producer.start()
                except KAFKA_ERRORS as exc:
                    with contextlib.suppress(*KAFKA_ERRORS):
                        await producer.stop()
                    raise kafka_error(exc, "connecting the producer") from exc
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        self._closed = True
        starting = list(self._starting.values())
        if starting:  # let them finish (a consumer cancelled mid-start would leak its sockets)
            await asyncio.wait(starting, timeout=15)
            for task in starting:
                task.cancel()
        consumers = list(self._consumers.values())
        self._consumers.clear()
        for c in consumers:
            if c.task is not None:
                c.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, *KAFKA_ERRORS):
                    await c.task
            with contextlib.suppress(*KAFKA_ERRORS):
                await c.consumer.stop()  # leaves the group: its partitions move at once
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(*KAFKA_ERRORS):
                await producer.stop()

    async def _ensure_topics(self, channel: str) -> None:
        if channel not in self._created:
            topics = {lane_topic(self.prefix, channel, r): self.partitions for r in RANKS}
            await ensure_topics(self.conn, topics)
            self._created.add(channel)

    # Publishing (the relay) ----------------------------------------------------------------------
    def _records(self, items: Sequence[OutboxItem]) -> list[tuple[str, str, list[str]]]:
        """(channel, topic, ids) of at most ``ids_per_message`` ids, in the items' order per lane."""
        lanes: dict[tuple[str, int], list[str]] = {}
        for item in items:
            lanes.setdefault((item.channel, item.priority), []).append(item.delivery_id)
        out = []
        n = self.ids_per_message
        for (channel, rank), ids in lanes.items():
            topic = lane_topic(self.prefix, channel, rank)
            out += [(channel, topic, ids[i : i + n]) for i in range(0, len(ids), n)]
        return out

    async def publish(self, items: Sequence[OutboxItem]) -> None:
        """Produce the items' ids as a few records per lane (acks=all); return once every one
        was acknowledged. Raises ServiceUnavailable otherwise (the relay keeps its rows)."""
        if not items:
            return
        producer = await self._producer_started()
        for channel in sorted({i.channel for i in items}):
            await self._ensure_topics(channel)
        todo = self._records(items)
        failed: list[BaseException] = []
        for attempt in range(3):
            # Retried here a few times: a topic just created (or a leader that moved) answers
            # NotLeaderForPartition until the producer's metadata catch up.
            if attempt:
                await asyncio.sleep(0.1 * attempt)
                with contextlib.suppress(*KAFKA_ERRORS):
                    await producer.client.force_metadata_update()
            try:
                sent = [
                    await producer.send(topic, "\n".join(ids).encode(), key=ids[0].encode())
                    for _, topic, ids in todo
                ]
            except KAFKA_ERRORS as exc:
                self._created.clear()  # a broker that lost its topics: create them again
                raise kafka_error(exc, f"publishing {len(todo)} records") from exc
            outcomes = await asyncio.gather(*sent, return_exceptions=True)
            failed = []
            again = []
            for record, o in zip(todo, outcomes, strict=True):
                if isinstance(o, BaseException):
                    if not isinstance(o, KAFKA_ERRORS):
                        raise o
                    failed.append(o)
                    again.append(record)
                else:
                    self.published[record[0]] += len(record[2])
            if not again:
                return
            todo = again
        self._created.clear()
        raise kafka_error(failed[0], f"publishing {len(failed)} records")

    # Consuming -----------------------------------------------------------------------------------
    async def _consume(self, channel: str) -> _Consumer:
        c = self._consumers.get(channel)
        if c is not None:
            return c
        lock = self._consumer_locks.setdefault(channel, asyncio.Lock())
        async with lock:
            c = self._consumers.get(channel)
            if c is not None:
                return c
            if self._closed:
                raise ServiceUnavailable("the queue is closed")
            ranks = self.lanes.get(channel, RANKS)
            await self._ensure_topics(channel)
            group = group_id(self.prefix, channel, ranks)
            consumer = AIOKafkaConsumer(
                **self.conn.client_args(),
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=int(self.session_timeout * 1000),
                heartbeat_interval_ms=max(100, int(self.session_timeout * 1000 / 3)),
                metadata_max_age_ms=5000,
                max_poll_records=500,
            )
            c = _Consumer(channel, ranks, group, consumer)
            consumer.subscribe(
                [lane_topic(self.prefix, channel, r) for r in ranks], listener=_Rebalance(self, c)
            )
            try:
                await consumer.start()
            except BaseException as exc:
                with contextlib.suppress(*KAFKA_ERRORS):
                    await asyncio.shield(consumer.stop())
                if isinstance(exc, KAFKA_ERRORS):
                    raise kafka_error(exc, f"consuming {channel}") from exc
                raise
            if self._closed:
                with contextlib.suppress(*KAFKA_ERRORS):
                    await consumer.stop()
                raise ServiceUnavailable("the queue is closed")
            c.state = "consuming"
            c.task = asyncio.create_task(self._fetch(c), name=f"herald-kafka-fetch-{channel}")
            self._consumers[channel] = c
            return c

    def _rank(self, c: _Consumer, topic: str) -> int | None:
        for r in c.ranks:
            if lane_topic(self.prefix, c.channel, r) == topic:
                return r
        return None

    async def _fetch(self, c: _Consumer) -> None:
        """Fetch into the lane buffers for as long as the queue is open."""
        failures = 0
        checked = time.monotonic()
        while not self._closed:
            if time.monotonic() - checked > 10:
                checked = time.monotonic()
                lost = await lost_offsets(c.consumer, dict(c.seen))
                if lost:
                    # The broker lost its state (restarted empty): its topics and group are new,
                    # possibly with other partitions. Join afresh, from the start of each log
                    # (records of deliveries already claimed are skipped by the claim).
                    log.warning("queue.kafka_offsets_lost", channel=c.channel, partitions=len(lost))
                    if self._consumers.get(c.channel) is c:
                        del self._consumers[c.channel]
                    c.state = "restarting"
                    with contextlib.suppress(*KAFKA_ERRORS):
                        await c.consumer.stop()
                    self.signals.wake(c.channel)  # the next wait starts a new consumer
                    return
            try:
                batch = await c.consumer.getmany(timeout_ms=1000, max_records=500)
            except KAFKA_ERRORS as exc:
                failures += 1
                c.state = "failing"
                if failures == 1:
                    log.warning(
                        "queue.kafka_fetch_failed", channel=c.channel, error=str(exc) or type(exc).__name__
                    )
                await asyncio.sleep(min(5.0, 0.25 * 2 ** min(failures, 5)))
                continue
            if failures:
                log.info("queue.kafka_fetch_recovered", channel=c.channel)
                failures = 0
            c.state = "consuming"
            top = None
            for tp, records in batch.items():
                rank = self._rank(c, tp.topic)
                if rank is None:
                    continue
                for r in records:
                    ids = record_ids(r.value)
                    c.buffers[rank].append(_Buffered(tp, r.offset, ids))
                    self.received[c.channel] += len(ids)
                top = rank if top is None else min(top, rank)
            self._flow(c)
            if top is not None:
                self.signals.wake(c.channel, top)

    def _flow(self, c: _Consumer) -> None:
        """Pause the lanes whose buffer is full, resume those drained to half of it."""
        assigned = c.consumer.assignment()
        for rank in c.ranks:
            size = len(c.buffers[rank])
            if rank not in c.paused and size >= self.prefetch:
                c.paused.add(rank)
            elif rank in c.paused and size <= self.prefetch // 2:
                c.paused.discard(rank)
            else:
                continue
            topic = lane_topic(self.prefix, c.channel, rank)
            tps = [tp for tp in assigned if tp.topic == topic]
            if rank in c.paused:
                c.consumer.pause(*tps)
            else:
                c.consumer.resume(*tps)

    async def _commit(self, c: _Consumer, only: set[TopicPartition] | None = None) -> None:
        """Commit the finished offsets not committed yet (of ``only``'s partitions)."""
        assigned = c.consumer.assignment()
        offsets = {
            tp: o
            for tp, o in c.finished.items()
            if tp in assigned and c.committed.get(tp) != o and (only is None or tp in only)
        }
        if not offsets:
            return
        try:
            await c.consumer.commit(offsets)
        except KAFKA_ERRORS as exc:
            # Not committed: the records come again (to us or the partition's next owner) and
            # find their deliveries claimed.
            log.warning("queue.kafka_commit_failed", channel=c.channel, error=str(exc) or type(exc).__name__)
            return
        c.committed.update(offsets)
        c.seen.update(offsets)

    # The Queue port ------------------------------------------------------------------------------
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
        c = await self._consume(channel)
        ranks = RANKS[min_rank : max_rank + 1]
        async with c.claiming:
            out = await self._claim(c, owner=owner, limit=limit, ranks=ranks, lease=lease, now=now)
        self._flow(c)
        await self._commit(c)
        return out

    async def _claim(
        self, c: _Consumer, *, owner: str, limit: int, ranks: Sequence[int], lease: float, now: float
    ) -> list[Delivery]:
        out: list[Delivery] = []
        while len(out) < limit:
            plan: list[tuple[int, _Buffered, int]] = []
            ids: list[str] = []
            for rank in ranks:
                for entry in list(c.buffers[rank]):
                    if len(out) + len(ids) >= limit:
                        break
                    n = min(entry.left, limit - len(out) - len(ids))
                    plan.append((rank, entry, n))
                    ids += entry.ids[entry.taken : entry.taken + n]
            if not plan:
                break
            if ids:
                # The time of this pass (see AmqpQueue._claim: records keep arriving meanwhile).
                now = max(now, self._now())
                got = await self.store.claim_ids(ids, owner=owner, lease=lease, now=now, early=self.early)
                out.extend(got)
            # The claim committed: records all of whose ids are claimed are finished, in offset
            # order per partition (each buffer is taken from its front).
            for rank, entry, n in plan:
                entry.taken += n
                if entry.left:
                    continue
                buffer = c.buffers[rank]
                if buffer and buffer[0] is entry:
                    buffer.popleft()
                else:  # dropped by a rebalance meanwhile: its partition is someone else's
                    with contextlib.suppress(ValueError):
                        buffer.remove(entry)
                    continue
                if entry.tp is not None:
                    c.finished[entry.tp] = entry.offset + 1
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
        """Buffer critical/high deliveries routed here for this process's own consumers of
        their lanes (as :meth:`AmqpQueue.hand_over`): claimed without the broker's round trip;
        the record, when it comes, finds them claimed."""
        now = self._now()
        grouped: dict[tuple[str, int], list[str]] = {}
        for d in deliveries:
            rank = d.priority.rank
            consumed = d.channel in self._consumers and rank in self.lanes.get(d.channel, RANKS)
            if consumed and d.due_at <= now + self.early:
                grouped.setdefault((d.channel, rank), []).append(d.id)
        for (channel, rank), ids in grouped.items():
            self._consumers[channel].buffers[rank].append(_Buffered(None, -1, ids))
            self.handed_over[channel] += len(ids)
            self.signals.wake(channel, rank)

    def wake(self, channel: str | None = None, top_rank: int = 0) -> None:
        self.signals.wake(channel, top_rank)
        for listener in self._wake_listeners:
            listener(channel)

    async def wait(self, channel: str, timeout: float, max_rank: int = 3) -> None:
        if channel not in self._consumers and channel not in self._starting:
            task = asyncio.create_task(self._consume_quietly(channel), name=f"herald-kafka-consume-{channel}")
            self._starting[channel] = task
            task.add_done_callback(lambda _: self._starting.pop(channel, None))
        await self.signals.wait(channel, timeout, max_rank)

    async def _consume_quietly(self, channel: str) -> None:
        try:
            await self._consume(channel)
        except HeraldError as exc:  # the broker is away: the next wait tries again
            if channel not in self._consume_failing:
                self._consume_failing.add(channel)
                log.warning("queue.consume_failed", channel=channel, error=exc.detail)
            await asyncio.sleep(1.0)  # the next wait tries again, not at once
            return
        except Exception:  # a bug must not go unseen; the next wait tries again
            log.exception("queue.consume_crashed", channel=channel)
            return
        if channel in self._consume_failing:
            self._consume_failing.discard(channel)
            log.info("queue.consume_recovered", channel=channel)

    # Observability -------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """Per channel consumer: state, buffered records, lag (high watermark at the last fetch
        minus the offset committed, per lane)."""
        out = []
        for c in self._consumers.values():
            topics: dict[str, int] = {lane_topic(self.prefix, c.channel, r): 0 for r in c.ranks}
            for tp in c.consumer.assignment():
                hw = c.consumer.highwater(tp)
                if tp.topic in topics and hw is not None:
                    topics[tp.topic] += max(0, hw - c.committed.get(tp, 0))
            out.append(
                {
                    "kind": "queue",
                    "channel": c.channel,
                    "group": c.group,
                    "state": c.state,
                    "partitions": len(c.consumer.assignment()),
                    "buffered": sum(len(b) for b in c.buffers),
                    "lag": sum(topics.values()),
                    "topics": topics,
                }
            )
        return out
