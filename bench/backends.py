"""``--mode scaleout``: herald on PostgreSQL + Redis + RabbitMQ, and what those servers cost.

Each run gets its own namespace on the shared local servers, removed afterwards:

* PostgreSQL: a fresh schema (``CREATE SCHEMA``), put first on every connection's
  ``search_path`` by the database URL (``options=-csearch_path=<schema>``); the URL also sets
  ``application_name=<schema>``, which is how herald's backend processes are told apart from
  other users of the same server (``pg_stat_activity``);
* Redis: a unique ``cache.prefix`` (its keys are deleted after the run);
* RabbitMQ: a unique ``queue.prefix`` (its lane, dead-letter and event queues and the events
  exchange are deleted after the run).

CPU of the backends comes from ``/proc`` like the rest: herald's own PostgreSQL backends
(sampled every second, so a connection that closes mid-run still counts up to its last
sample), PostgreSQL's background processes (WAL writer, checkpointer, autovacuum...), the
Redis server and the RabbitMQ node. Only herald's PostgreSQL backends are herald's alone; the
other three are whole server processes shared with anything else using the same servers (other
engineers' tests on this machine), so they are upper bounds.

Server URLs: ``HERALD_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``),
``HERALD_BENCH_REDIS_URL`` (``redis://127.0.0.1:6379/0``), ``HERALD_BENCH_RABBITMQ_URL``
(``amqp://guest:guest@127.0.0.1:5672/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from bench.procs import cpu_seconds, peak_rss_mb

PG_URL = os.environ.get("HERALD_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HERALD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("HERALD_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
CHANNELS = ("email", "sms", "push", "in_app", "webhook", "chat")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def _pg_connect(url: str = PG_URL) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


@dataclass
class ScaleoutStack:
    """One run's schema and prefixes on the shared PostgreSQL, Redis and RabbitMQ (or, with
    ``queue = "kafka"``, a private Tansu broker started for the run: ``bench/tansu.py``)."""

    name: str = field(default_factory=lambda: f"herald_bench_{uuid.uuid4().hex[:12]}")
    queue: str = "amqp"
    kafka: Any = None  # bench.tansu.Tansu while the run lasts

    @property
    def schema(self) -> str:
        return self.name

    @property
    def prefix(self) -> str:  # RabbitMQ names and (with a colon) Redis keys
        return self.name.replace("_", "-")

    @property
    def database_url(self) -> str:
        sep = "&" if "?" in PG_URL else "?"
        return f"{PG_URL}{sep}options={quote(f'-csearch_path={self.schema}')}&application_name={self.schema}"

    @property
    def cache_prefix(self) -> str:
        return f"{self.prefix}:"

    def describe(self) -> dict[str, str]:
        """For the result line: where this run lived (the password, if any, left out)."""
        return {
            "schema": self.schema,
            "cache_prefix": self.cache_prefix,
            "queue_prefix": self.prefix,
            "postgres": _redact(PG_URL),
            "redis": _redact(REDIS_URL),
            **({"kafka": self.kafka.url} if self.kafka is not None else {"rabbitmq": _redact(RABBITMQ_URL)}),
        }

    def sections(self) -> dict[str, dict[str, str]]:
        """herald.toml values for this stack."""
        return {
            "database": {"url": self.database_url},
            "cache": {"url": REDIS_URL, "prefix": self.cache_prefix},
            "queue": {"url": RABBITMQ_URL if self.kafka is None else self.kafka.url, "prefix": self.prefix},
        }

    async def create(self) -> None:
        """The schema; fail early (and clearly) when a server is not reachable."""
        await asyncio.to_thread(self._create_schema)
        import aio_pika
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            await client.ping()
        finally:
            await client.aclose()
        if self.queue == "kafka":
            return  # the broker is started by start_kafka, before herald's configuration is written
        conn = await aio_pika.connect(RABBITMQ_URL, timeout=5)
        await conn.close()

    def start_kafka(self, workdir: Path) -> None:
        """``queue = "kafka"``: this run's own broker."""
        from bench.tansu import Tansu

        self.kafka = Tansu(workdir / "tansu.log")
        self.kafka.start()

    def _create_schema(self) -> None:
        with _pg_connect() as pg:
            pg.execute(f'CREATE SCHEMA "{self.schema}"')

    async def drop(self) -> list[str]:
        """Remove everything the run created; returns what could not be removed."""
        problems: list[str] = []
        try:
            await asyncio.to_thread(self._drop_schema)
        except Exception as exc:
            problems.append(f"postgres schema {self.schema}: {exc}")
        try:
            await self._delete_redis_keys()
        except Exception as exc:
            problems.append(f"redis keys {self.cache_prefix}*: {exc}")
        if self.kafka is not None:
            self.kafka.stop()  # its topics and groups go with it (memory storage)
            return problems
        try:
            await self._delete_rabbitmq()
        except Exception as exc:
            problems.append(f"rabbitmq {self.prefix}.*: {exc}")
        return problems

    def _drop_schema(self) -> None:
        with _pg_connect() as pg:
            # herald is stopped by now; a connection left over would hold locks on the schema.
            pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (self.schema,),
            )
            pg.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    async def _delete_redis_keys(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=self.cache_prefix + "*", count=1000)]
            for i in range(0, len(keys), 1000):
                await client.delete(*keys[i : i + 1000])
        finally:
            await client.aclose()

    async def wait_consumers(self, queues: list[str], timeout: float = 180.0) -> None:
        """Until each of ``queues`` (lane queues) has a consumer: ``--mode split``'s workers are
        up (they have no HTTP port to ask), so that their start-up is not measured."""
        import aio_pika

        deadline = asyncio.get_running_loop().time() + timeout
        conn = await aio_pika.connect(RABBITMQ_URL, timeout=5)
        try:
            while True:
                missing = []
                for name in queues:
                    channel = await conn.channel()
                    try:
                        queue = await channel.declare_queue(name, passive=True)
                        if not queue.declaration_result.consumer_count:
                            missing.append(name)
                    except aio_pika.exceptions.ChannelClosed:  # not declared yet
                        missing.append(name)
                    finally:
                        with contextlib.suppress(Exception):
                            await channel.close()
                if not missing:
                    return
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"no consumer on {missing} after {timeout:.0f}s")
                await asyncio.sleep(0.5)
        finally:
            await conn.close()

    def queue_names(self) -> list[str]:
        from herald.adapters.queue.amqp import dead_letter_queue, lane_queue
        from herald.domain.models import Priority

        names = [f"{self.prefix}.events.ingest", f"{self.prefix}.events.invalid"]
        for ch in CHANNELS:
            names.append(dead_letter_queue(self.prefix, ch))
            names.extend(lane_queue(self.prefix, ch, p.rank) for p in Priority)
        return names

    async def _delete_rabbitmq(self) -> None:
        import aio_pika

        conn = await aio_pika.connect(RABBITMQ_URL, timeout=5)
        try:
            channel = await conn.channel()
            for name in self.queue_names():
                try:
                    await channel.queue_delete(name)
                except aio_pika.exceptions.ChannelClosed:
                    channel = await conn.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                await channel.exchange_delete(f"{self.prefix}.events")
        finally:
            await conn.close()


# Backend processes' CPU -------------------------------------------------------------------------


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _find_pid(comm: str, cmdline_has: str = "") -> int | None:
    for pid in _pids():
        if _comm(pid) != comm:
            continue
        if cmdline_has:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline_has.encode() not in cmdline:
                continue
        return pid
    return None


def _cpu(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


class BackendMonitor:
    """CPU seconds of the backend servers during the measured window (see the module docstring)."""

    def __init__(self, stack: ScaleoutStack) -> None:
        self.stack = stack
        self.redis_pid = _find_pid("redis-server")
        self.rabbitmq_pid = _find_pid("beam.smp", "rabbit")
        # The queue's broker: RabbitMQ (shared), or this run's own Tansu (herald's alone).
        self.queue_name = "kafka" if stack.kafka is not None else "rabbitmq"
        self.queue_pid = stack.kafka.pid if stack.kafka is not None else self.rabbitmq_pid
        self._start: dict[str, float] = {}
        # herald's PostgreSQL backends and the server's background processes: pid -> [first, last]
        self._herald_pg: dict[int, list[float]] = {}
        self._background_pg: dict[int, list[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._lock = threading.Lock()  # samples come from the loop and from a worker thread

    def _pg_pids(self) -> tuple[list[int], list[int]]:
        if self._conn is None:
            self._conn = _pg_connect()
        rows = self._conn.execute(
            "SELECT pid, application_name, backend_type FROM pg_stat_activity"
        ).fetchall()
        herald = [int(pid) for pid, app, _type in rows if app == self.stack.schema]
        background = [int(pid) for pid, _app, kind in rows if kind != "client backend"]
        return herald, background

    def _sample(self, *, first: bool = False) -> None:
        with self._lock:
            self._sample_locked(first)

    def _sample_locked(self, first: bool) -> None:
        herald, background = self._pg_pids()
        for pids, seen in ((herald, self._herald_pg), (background, self._background_pg)):
            for pid in pids:
                cpu = _cpu(pid)
                if cpu is None:
                    continue
                if pid in seen:
                    seen[pid][1] = cpu
                else:
                    # A backend that appeared after the start counts from zero (it did all its
                    # work within the window); one that was there counts from now.
                    seen[pid] = [cpu if first else 0.0, cpu]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._sample)

    def mark(self) -> None:
        self._herald_pg.clear()
        self._background_pg.clear()
        self._sample(first=True)
        for name, pid in (("redis", self.redis_pid), (self.queue_name, self.queue_pid)):
            cpu = _cpu(pid) if pid else None
            if cpu is not None:
                self._start[name] = cpu
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def usage(self) -> dict[str, dict[str, Any]]:
        with contextlib.suppress(Exception):
            self._sample()
        out: dict[str, dict[str, Any]] = {
            "postgres_herald": {
                "cpu_s": round(sum(last - first for first, last in self._herald_pg.values()), 2),
                "backends": len(self._herald_pg),
            },
            "postgres_background": {
                "cpu_s": round(sum(last - first for first, last in self._background_pg.values()), 2),
                "shared": True,
            },
        }
        for name, pid in (("redis", self.redis_pid), (self.queue_name, self.queue_pid)):
            cpu = _cpu(pid) if pid else None
            if pid is None or cpu is None or name not in self._start:
                out[name] = {"cpu_s": None, "shared": True}
                continue
            out[name] = {
                "cpu_s": round(cpu - self._start[name], 2),
                "peak_rss_mb": peak_rss_mb(pid),
                "shared": name != "kafka",  # the Tansu broker is this run's own
            }
        return out

    def cpu_total(self, usage: dict[str, dict[str, Any]]) -> float:
        return sum(float(u["cpu_s"] or 0.0) for u in usage.values())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
