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
fetching of critical records, and a consumer of bulk lanes never holds a critical record. The
claim is :class:`herald.adapters.queue.broker.BrokerQueue`'s; once it committed, a partition's
offset is committed up to its last finished record (all its ids claimed or no longer
claimable): records of one partition are finished in offset order (each buffer is taken from its
front), so a committed offset never passes a record whose deliveries are not claimed. When the
store is down the records stay buffered, uncommitted, and the next claim tries again. A record
redelivered (a rebalance, a crash before the commit) finds its deliveries claimed or finished
and is skipped; a worker that dies after the commit and before sending is covered by the lease
(``reclaim_expired_leases`` puts the delivery back to ``retrying`` with a new outbox row).

Retries are outbox rows due later (the relay publishes only due rows: :mod:`.broker` says why);
there is no dead-letter topic: the database's retry budget decides when a delivery is dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
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
from herald.adapters.queue.broker import RANKS, BrokerQueue, Buffered, Lanes, body_ids, lane_name
from herald.domain.errors import ServiceUnavailable
from herald.domain.models import Priority
from herald.ports import Clock, OutboxItem, Store

log = structlog.get_logger("herald.queue.kafka")

lane_topic = lane_name  # herald.q.<channel>.<priority>
record_ids = body_ids


def group_id(prefix: str, channel: str, ranks: Sequence[int]) -> str:
    return f"{prefix}.g.{channel}." + "-".join(Priority.from_rank(r).value for r in sorted(ranks))


@dataclass(eq=False)
class _Record(Buffered):
    """A fetched record's ids; ``tp`` is None for ids this process routed itself
    (:meth:`KafkaQueue.hand_over`: nothing to commit)."""

    tp: TopicPartition | None = None
    offset: int = -1


@dataclass(eq=False, kw_only=True)
class _Consumer(Lanes[_Record]):
    """The consumer of one channel's lanes in this process and what it fetched so far."""

    channel: str
    ranks: tuple[int, ...]
    group: str
    consumer: AIOKafkaConsumer
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


class KafkaQueue(BrokerQueue[_Record, _Consumer]):
    kind = "kafka"
    _log = log
    consume_retry_pause = 1.0

    def __init__(
        self,
        conn: KafkaConnection,
        store: Store,
        clock: Clock | None = None,
        *,
        prefix: str = "herald",
        partitions: int = 6,
        prefetch: int = 64,  # buffered records per lane before the lane is paused
        ids_per_message: int = 50,
        early: float = 0.5,
        session_timeout: float = 10.0,
        publish_timeout: float = 15.0,
        lanes: Mapping[str, Collection[int]] | None = None,
    ) -> None:
        super().__init__(store, clock, prefix, prefetch, ids_per_message, early, publish_timeout, lanes)
        self.conn = conn
        self.partitions = partitions
        self.session_timeout = session_timeout
        self.dropped: Counter[str] = Counter()  # ids fetched, dropped unclaimed when a rebalance took them
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._created: set[str] = set()  # channels whose topics exist (as far as we know)

    # Connection ----------------------------------------------------------------------------------
    async def _connect(self) -> AIOKafkaProducer:
        """The producer, started once."""
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
        consumers = list(self._lanes.values())
        self._lanes.clear()
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
    async def publish(self, items: Sequence[OutboxItem]) -> None:
        """Produce the items' ids as a few records per lane (acks=all); return once every one
        was acknowledged. Raises ServiceUnavailable otherwise (the relay keeps its rows)."""
        if not items:
            return
        producer = await self._connect()
        for channel in sorted({i.channel for i in items}):
            await self._ensure_topics(channel)
        todo = self._batches(items)
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
        c = self._lanes.get(channel)
        if c is not None:
            return c
        lock = self._lane_locks.setdefault(channel, asyncio.Lock())
        async with lock:
            c = self._lanes.get(channel)
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
            c = _Consumer(channel=channel, ranks=ranks, group=group, consumer=consumer)
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
            self._lanes[channel] = c
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
                    if self._lanes.get(c.channel) is c:
                        del self._lanes[c.channel]
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
                    c.buffers[rank].append(_Record(ids, tp=tp, offset=r.offset))
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

    # The claim's broker side ---------------------------------------------------------------------
    async def _finished(self, lanes: _Consumer, done: Sequence[tuple[int, _Record]]) -> None:
        """A partition's offset may be committed up to its last finished record: records of one
        partition are finished in offset order, so a committed offset never passes a record
        whose deliveries are not claimed."""
        for _, entry in done:
            if entry.tp is not None:
                lanes.finished[entry.tp] = entry.offset + 1

    async def _claimed(self, lanes: _Consumer) -> None:
        self._flow(lanes)
        await self._commit(lanes)

    def _handed(self, ids: list[str]) -> _Record:
        return _Record(ids)

    # Observability -------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """Per channel consumer: state, buffered records, lag (high watermark at the last fetch
        minus the offset committed, per lane)."""
        out = []
        for c in self._lanes.values():
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
