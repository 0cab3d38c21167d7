"""Event ingestion from Kafka: producers write events to a topic instead of calling ``POST /v1/events``.

Configuration (``[events]``): ``kafka_url`` (bootstrap servers), ``kafka_topic`` (default
``herald.events``), ``kafka_group`` (default ``herald-events``). Every process that runs this
consumer (``herald worker``, ``herald serve``) joins the group, so the topic's partitions are
shared among them and move to the survivors when one stops or dies.

A record's value is the ``POST /v1/events`` JSON body. Its idempotency key is the body's
``idempotency_key``, else the record's key, else ``<topic>/<partition>/<offset>`` (the record's
own identity: a redelivered record never creates a second notification). Each record goes to
the same use case as the HTTP route (``EventService.ingest``).

**What is committed when.** The consumer takes a batch of records (up to ``batch``, from any of
its partitions), accepts them all concurrently (the accept path commits them in groups), and
commits each partition's offset only once *every* record of the batch is durably accepted (the
notification is committed in the database) or parked. A batch is finished before the next one
is fetched, so an offset committed never passes a record that was not accepted. Outcomes:

- accepted, or an idempotent repeat: done.
- not JSON, not a JSON object, refused by the use case (a validation error, an event type
  without a rule, an idempotency key reused with another body, any other 4xx) or an unexpected
  error in herald: the record (value, key, headers) is produced to ``<topic>.invalid`` with the
  reason in the ``x-herald-reason`` header (acks=all), then it counts as done.
- the database is down (``ServiceUnavailable``), or the same key is still being accepted
  (``Conflict``): the consumer pauses its partitions and retries with backoff, committing
  nothing, until the database is back. It keeps polling meanwhile (paused, so nothing is
  fetched), which keeps it in the group.
- the process dies: nothing of the unfinished batch was committed, and the group hands its
  partitions to another member, which starts at the committed offsets; what this process had
  already accepted comes again and is absorbed by the idempotency key.

The producer is not idempotent (``enable_idempotence`` off, acks=all): a park that is
retried may be written twice to the invalid topic, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from herald.adapters.kafka_client import (
    KAFKA_ERRORS,
    KafkaConnection,
    ensure_topics,
    kafka_error,
    lost_offsets,
)
from herald.domain.errors import Conflict, HeraldError, ServiceUnavailable

log = structlog.get_logger("herald.events.kafka")


class EventHandler(Protocol):
    def __call__(self, payload: dict[str, Any], *, idempotency_key: str | None) -> Awaitable[Any]: ...


class KafkaEventConsumer:
    def __init__(
        self,
        conn: KafkaConnection,
        handler: EventHandler,
        *,
        topic: str = "herald.events",
        group: str = "herald-events",
        partitions: int = 6,
        batch: int = 500,
        retry_pause: float = 0.5,
        max_retry_pause: float = 10.0,
        session_timeout: float = 10.0,
        heartbeat_interval: float = 3.0,
        poll_timeout: float = 1.0,
    ) -> None:
        self.conn = conn
        self.handler = handler
        self.topic = topic
        self.invalid_topic = f"{topic}.invalid"
        self.group = group
        self.partitions = partitions  # only when herald creates the topic
        self.batch = batch
        self.retry_pause = retry_pause
        self.max_retry_pause = max_retry_pause
        self.session_timeout = session_timeout
        self.heartbeat_interval = heartbeat_interval
        self.poll_timeout = poll_timeout
        self.state = "stopped"
        self.accepted = 0  # accepted (or idempotent repeats)
        self.parked = 0  # produced to the invalid topic
        self.commits = 0
        self.committed: dict[int, int] = {}  # partition -> the offset committed last (next to read)
        self.highwater: dict[int, int] = {}  # partition -> its high watermark at the last fetch
        self.assigned: list[int] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self._checked = time.monotonic()

    # Lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the topics if missing, connect, join the group; raise when the broker is down."""
        await ensure_topics(self.conn, {self.topic: self.partitions, self.invalid_topic: self.partitions})
        args = self.conn.client_args()
        producer = AIOKafkaProducer(**args, acks="all", enable_idempotence=False, request_timeout_ms=15000)
        consumer = AIOKafkaConsumer(
            self.topic,
            **args,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.session_timeout * 1000),
            heartbeat_interval_ms=int(self.heartbeat_interval * 1000),
            metadata_max_age_ms=5000,  # a topic re-created (an empty broker) is seen soon
            max_poll_records=self.batch,
        )
        try:
            await producer.start()
            await consumer.start()
        except KAFKA_ERRORS as exc:
            for client in (consumer, producer):
                with contextlib.suppress(*KAFKA_ERRORS):
                    await client.stop()
            raise kafka_error(exc, "starting the event consumer") from exc
        self._producer, self._consumer = producer, consumer
        self.state = "consuming"
        log.info("events.kafka_consuming", topic=self.topic, group=self.group)

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` (reconnecting while the broker is unreachable), then close."""
        failures = 0
        stop_task = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set():
                if self._consumer is None:
                    try:
                        self.state = "connecting"
                        await self.start()
                        failures = 0
                    except ServiceUnavailable as exc:
                        failures += 1
                        self.state = "disconnected"
                        if failures == 1:
                            log.warning("events.kafka_unavailable", error=exc.detail)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(stop_task), min(10.0, 0.25 * 2**failures))
                        continue
                await self._step(stopping)
        finally:
            stop_task.cancel()
            self._stopping.set()
            await self.close()

    async def close(self) -> None:
        self._stopping.set()
        await self._stop_clients()
        self.state = "stopped"

    async def _stop_clients(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        for client in (consumer, producer):
            if client is not None:
                with contextlib.suppress(*KAFKA_ERRORS):
                    await client.stop()

    # Consuming -----------------------------------------------------------------------------------
    async def _step(self, stopping: asyncio.Event) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            batch = await consumer.getmany(timeout_ms=int(self.poll_timeout * 1000), max_records=self.batch)
        except KAFKA_ERRORS as exc:
            # A fatal consumer error (not a passing disconnection: aiokafka retries those itself).
            log.warning("events.kafka_consumer_failed", error=str(exc) or type(exc).__name__)
            self.state = "disconnected"
            await self._stop_clients()  # the run loop starts them again
            return
        await self._observe(consumer)
        if time.monotonic() - self._checked > 10:
            self._checked = time.monotonic()
            if await self._check_offsets(consumer):
                return  # rejoining: this batch comes again from the start of the log
        records = [r for rs in batch.values() for r in rs]
        if records:
            await self._finish(consumer, records, stopping)

    async def _observe(self, consumer: AIOKafkaConsumer) -> None:
        assigned = sorted(tp.partition for tp in consumer.assignment() if tp.topic == self.topic)
        if assigned != self.assigned:
            log.info("events.kafka_assigned", topic=self.topic, partitions=assigned)
            self.assigned = assigned
            for p in assigned:  # the group's committed offsets, for the lag of new partitions
                with contextlib.suppress(*KAFKA_ERRORS):
                    committed = await consumer.committed(TopicPartition(self.topic, p))
                    if committed is not None:
                        self.committed[p] = committed
        for p in assigned:
            hw = consumer.highwater(TopicPartition(self.topic, p))
            if hw is not None:
                self.highwater[p] = hw

    async def _check_offsets(self, consumer: AIOKafkaConsumer) -> bool:
        mine = {TopicPartition(self.topic, p): o for p, o in self.committed.items()}
        lost = await lost_offsets(consumer, mine)
        if lost:
            # The cluster lost its state (a broker restarted empty): its topic and group are new,
            # possibly with other partitions. Join afresh, reading from the start of each log.
            log.warning("events.kafka_offsets_lost", partitions=sorted(tp.partition for tp in lost))
            self.committed.clear()
            self.highwater.clear()
            self.assigned = []
            self.state = "connecting"
            await self._stop_clients()
        return bool(lost)

    async def _finish(
        self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord[Any, Any]], stopping: asyncio.Event
    ) -> None:
        """Accept or park every record, then commit; while the database is down, pause and retry."""
        pending = records
        pause = self.retry_pause
        paused = False
        try:
            while True:
                done = await asyncio.gather(*(self._one(r) for r in pending))
                pending = [r for r, ok in zip(pending, done, strict=True) if not ok]
                if not pending:
                    break
                # Records of partitions taken from us meanwhile are the new owner's to read.
                mine = consumer.assignment()
                pending = [r for r in pending if TopicPartition(r.topic, r.partition) in mine]
                records = [r for r in records if TopicPartition(r.topic, r.partition) in mine]
                if not pending:
                    break
                if stopping.is_set():
                    return  # nothing committed: the next member reads these again
                if not paused:
                    log.warning("events.kafka_paused", pending=len(pending), pause_s=pause)
                    paused = True
                self.state = "paused"
                consumer.pause(*mine)
                # Poll while paused (nothing comes from paused partitions): it keeps this member
                # in the group through a long outage. Partitions assigned meanwhile are fetched.
                try:
                    more = await consumer.getmany(timeout_ms=int(pause * 1000), max_records=self.batch)
                except KAFKA_ERRORS:
                    more = {}
                for rs in more.values():
                    pending += rs
                    records += rs
                pause = min(self.max_retry_pause, pause * 2)
        finally:
            if paused:
                consumer.resume(*consumer.assignment())
                if self.state == "paused":
                    self.state = "consuming"
                    log.info("events.kafka_resumed")
        await self._commit(consumer, records)

    async def _commit(self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord[Any, Any]]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        mine = consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in mine}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KAFKA_ERRORS as exc:
            # A rebalance took the partition (or the broker is away): the records come again to
            # whoever reads the partition next, and their idempotency keys absorb them.
            log.warning("events.kafka_commit_failed", error=str(exc) or type(exc).__name__)
            return
        self.commits += 1
        for tp, o in offsets.items():
            self.committed[tp.partition] = o

    async def _one(self, record: ConsumerRecord[Any, Any]) -> bool:
        """Accept or park one record; False: try again later (the database is down)."""
        reason = None
        payload: Any = None
        try:
            payload = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError as exc:
            reason = f"invalid JSON: {exc}"
        if reason is None and not isinstance(payload, dict):
            reason = f"the value must be a JSON object, not {type(payload).__name__}"
        if reason is None:
            assert isinstance(payload, dict)
            key = None
            if "idempotency_key" not in payload:
                key = (
                    record.key.decode(errors="replace")
                    if record.key
                    else f"{record.topic}/{record.partition}/{record.offset}"
                )
            try:
                await self.handler(payload, idempotency_key=key)
                self.accepted += 1
                return True
            except (ServiceUnavailable, Conflict):
                return False
            except HeraldError as exc:
                reason = f"{exc.title}: {exc.detail}" + (f" ({exc.field})" if exc.field else "")
            except Exception as exc:
                log.exception("events.kafka_internal_error", partition=record.partition, offset=record.offset)
                reason = f"internal error: {type(exc).__name__}: {exc}"
        return await self._park(record, reason)

    async def _park(self, record: ConsumerRecord[Any, Any], reason: str) -> bool:
        producer = self._producer
        if producer is None:
            return False
        headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith("x-herald-")]
        headers += [
            ("x-herald-reason", reason[:1000].encode()),
            ("x-herald-topic", record.topic.encode()),
            ("x-herald-partition", str(record.partition).encode()),
            ("x-herald-offset", str(record.offset).encode()),
        ]
        try:
            await producer.send_and_wait(self.invalid_topic, record.value, key=record.key, headers=headers)
        except KAFKA_ERRORS as exc:
            log.warning("events.kafka_park_failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(0.2)
            return False
        self.parked += 1
        log.warning(
            "events.kafka_invalid",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason[:200],
        )
        return True

    # Observability -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """State and lag (high watermark at the last fetch minus the offset committed) per partition."""
        partitions = {}
        for p in self.assigned:
            hw = self.highwater.get(p)
            committed = self.committed.get(p)
            lag = None if hw is None else max(0, hw - (committed or 0))
            partitions[str(p)] = {"highwater": hw, "committed": committed, "lag": lag}
        return {
            "kind": "events",
            "topic": self.topic,
            "group": self.group,
            "state": self.state,
            "partitions": partitions,
            "lag": sum(v["lag"] or 0 for v in partitions.values()),
            "topics": {self.topic: sum(v["lag"] or 0 for v in partitions.values())},
            "accepted": self.accepted,
            "parked": self.parked,
            "at": time.time(),
        }
