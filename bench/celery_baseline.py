"""``python -m bench celery_baseline``: the Celery pipeline and herald's drain, back to back, in one run.

The same notifications (single-recipient email, the drain's template and users, 20,000 by
default) go first through the Celery pipeline of ``bench/celery_app.py`` (prefork, 8 processes,
RabbitMQ, PostgreSQL status rows, Redis dedup), then through herald's ``drain`` (``--mode`` and
the tuning options apply to herald), each to its own instance of the same SendGrid emulator
process (``bench/emulator.py``, same latency). herald's line carries ``vs_celery``: its
throughput over Celery's, and its CPU per notification over Celery's, measured minutes apart
on the same machine; the ratio is the figure to compare between runs, since the machine is
shared.

Celery's time: first task published → last provider receipt (publishing included, as herald's
accept is). Its CPU: the worker's main process and its 8 children; the PostgreSQL backends of
its connections, Redis and RabbitMQ are reported apart under ``processes.backends`` (Redis and
RabbitMQ are whole shared servers: upper bounds).

Its own names on the shared servers, all removed afterwards: a PostgreSQL schema, a Redis key
prefix and a RabbitMQ queue and exchange ``herald-bench-celery-<hex>``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.backends import PG_URL, RABBITMQ_URL, REDIS_URL, BackendMonitor, ScaleoutStack, _pg_connect
from bench.load import Receipts, user_id
from bench.procs import (
    Service,
    Usage,
    calibration_ms,
    emulator_service,
    machine_busy_seconds,
    python_env,
    self_cpu_seconds,
    source_version,
)

CONCURRENCY = 8
PRODUCERS = 4
WARMUP_ID = "celery-warmup"


def _configure(queue: str, broker: str) -> Any:
    """The harness's own handle on the Celery app (publishing), pointed at this run's queue."""
    os.environ["BENCH_CELERY_QUEUE"] = queue
    from bench import celery_app  # imported late: the module reads the queue name

    celery_app.configure(queue, broker)
    return celery_app


def _publish_one(
    celery_app: Any, items: list[tuple[str, dict[str, Any], dict[str, Any]]], starts: dict[str, float]
) -> None:
    """Publish ``items`` on one connection (what a web app's ``.delay()`` does per request)."""
    task = celery_app.send_notification
    with celery_app.app.producer_or_acquire() as producer:
        for nid, user, data in items:
            starts[nid] = time.time()
            task.apply_async(args=(nid, user, data), producer=producer)


def _publish(
    celery_app: Any,
    items: list[tuple[str, dict[str, Any], dict[str, Any]]],
    starts: dict[str, float],
    producers: int = PRODUCERS,
) -> None:
    """Several producers at once (a web app's workers), so publishing is never the limit."""
    with concurrent.futures.ThreadPoolExecutor(producers) as pool:
        done = [pool.submit(_publish_one, celery_app, items[i::producers], starts) for i in range(producers)]
        for future in done:
            future.result()


def _users(count: int) -> list[dict[str, Any]]:
    return [
        {"id": user_id(i), "email": f"{user_id(i)}@example.com", "data": {"name": f"User {i}"}}
        for i in range(count)
    ]


def _pg_counts(stack: ScaleoutStack) -> dict[str, int]:
    from bench.celery_app import TABLE

    with _pg_connect() as pg:
        rows = pg.execute(f'SELECT status, count(*) FROM "{stack.schema}".{TABLE} GROUP BY status').fetchall()
    return {str(status): int(n) for status, n in rows}


def _create_table(stack: ScaleoutStack) -> None:
    from bench.celery_app import SCHEMA_SQL

    with _pg_connect() as pg:
        pg.execute(f'SET search_path TO "{stack.schema}"')
        pg.execute(SCHEMA_SQL)


async def _delete_broker_names(queue: str) -> None:
    import aio_pika

    conn = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    try:
        channel = await conn.channel()
        with suppress(aio_pika.exceptions.ChannelClosed):
            await channel.queue_delete(queue)
        channel = await conn.channel()
        with suppress(aio_pika.exceptions.ChannelClosed):
            await channel.exchange_delete(queue)
    finally:
        await conn.close()


async def run_celery(opts: Any, count: int) -> dict[str, Any]:
    from bench.scenarios import note, percentiles

    stack = ScaleoutStack(name=f"herald_bench_celery_{uuid.uuid4().hex[:12]}")
    queue = stack.prefix
    workdir = Path(tempfile.mkdtemp(prefix="herald-bench-celery-"))
    emulator, emulator_url = emulator_service(workdir, latency=opts.latency, max_seconds=opts.max_seconds)
    env = python_env() | {
        "BENCH_CELERY_BROKER": RABBITMQ_URL,
        "BENCH_CELERY_QUEUE": queue,
        "BENCH_CELERY_PG": f"{PG_URL}{'&' if '?' in PG_URL else '?'}application_name={stack.schema}",
        "BENCH_CELERY_SCHEMA": stack.schema,
        "BENCH_CELERY_REDIS": REDIS_URL,
        "BENCH_CELERY_PREFIX": stack.cache_prefix,
        "BENCH_CELERY_PROVIDER": emulator_url,
        "BENCH_CELERY_API_KEY": _api_key(),
    }
    worker = Service(
        "celery",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(CONCURRENCY),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"{queue}@%h",
        ],
        cwd=workdir,
        log=workdir / "celery.log",
        env=env,
    )
    celery_app = _configure(queue, RABBITMQ_URL)
    receipts: Receipts | None = None
    backends: BackendMonitor | None = None
    created = False
    failed = False
    try:
        await stack.create()
        created = True
        await asyncio.to_thread(_create_table, stack)
        emulator.start()
        await emulator.wait_ready(emulator_url + "/_bench/stats")
        worker.start()
        receipts = Receipts(emulator_url)
        await receipts.start()
        # Ready when a first task went all the way (broker, Redis, PostgreSQL, provider).
        warm: dict[str, float] = {}
        await asyncio.to_thread(_publish, celery_app, [(WARMUP_ID, _users(1)[0], {"code": "0"})], warm)
        deadline = time.monotonic() + 120
        while WARMUP_ID not in receipts.first:
            if not worker.alive():
                raise RuntimeError(f"the celery worker exited at start:\n{worker.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the celery worker did not send within 120 s:\n{worker.tail()}")
            await receipts.poll()
            await asyncio.sleep(0.2)
        note(
            f"celery_baseline: worker pid {worker.pid} ready ({CONCURRENCY} prefork children), queue {queue}"
        )
        users = _users(200 if opts.quick else 1_000)
        items = [(f"cel{i:07d}", users[i % len(users)], {"code": f"{i:06d}"}) for i in range(count)]
        backends = BackendMonitor(stack)
        worker.mark()
        emulator.mark()
        backends.mark()
        loadgen_cpu = self_cpu_seconds()
        busy = machine_busy_seconds()
        calibration = calibration_ms()
        starts: dict[str, float] = {}
        begin = time.time()
        await asyncio.to_thread(_publish, celery_app, items, starts)
        published_at = time.time()
        note(f"celery_baseline: {count} published in {published_at - begin:.1f}s; waiting for delivery")
        limit = time.monotonic() + opts.max_seconds
        while time.monotonic() < limit:
            await receipts.poll()
            done = sum(1 for n in starts if n in receipts.first)
            if done >= count:
                await asyncio.sleep(0.5)
                await receipts.poll()
                break
            if time.monotonic() - receipts.last_change > 60:
                break
            if not worker.alive():
                raise RuntimeError(f"the celery worker died:\n{worker.tail()}")
            await asyncio.sleep(0.2)
        got = receipts.first
        received = [got[n] for n in starts if n in got]
        last = max(received) if received else begin
        usage: dict[str, Any] = {
            "celery": worker.usage().as_json(),
            "emulator": emulator.usage().as_json(),
            "loadgen": Usage(self_cpu_seconds() - loadgen_cpu, 0.0).as_json(),
            "backends": backends.usage(),
        }
        ours = usage["celery"]["cpu_s"] + usage["emulator"]["cpu_s"] + usage["loadgen"]["cpu_s"]
        ours += backends.cpu_total(usage["backends"])
        usage["others_cpu_s"] = round(max(0.0, machine_busy_seconds() - busy - ours), 2)
        rows = await asyncio.to_thread(_pg_counts, stack)
        lost = sum(1 for n in starts if n not in got)
        result: dict[str, Any] = {
            "scenario": "celery_baseline",
            "system": "celery",
            "mode": opts.mode,
            "quick": opts.quick,
            "count": count,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "herald_version": source_version(),
            "celery_processes": f"celery worker --pool prefork --concurrency {CONCURRENCY} "
            "(RabbitMQ broker, PostgreSQL status rows, Redis dedup, requests.Session to the provider)",
            "namespace": {"schema": stack.schema, "queue": queue, "redis_prefix": stack.cache_prefix},
            "accepted": len(starts),
            "received": len(received),
            "lost": lost,
            "dup": receipts.duplicates(),
            "unexpected": sum(1 for n in got if n not in starts and n != WARMUP_ID),
            "throughput": round(len(received) / (last - begin), 1) if received and not lost else None,
            "throughput_of": "notifications/s, first task published -> last provider receipt",
            "duration_s": round(last - begin, 2),
            "publish_rate": round(count / max(1e-9, published_at - begin), 1),
            "latency_of": "task published -> provider receipt, per notification",
            "latency_ms": percentiles(got[n] - t for n, t in starts.items() if n in got),
            "status_rows": rows,
            "processes": usage,
            "cpu_ms_per_notification": round(1000 * usage["celery"]["cpu_s"] / max(1, count), 3),
            "calibration_ms": {"start": calibration, "end": calibration_ms()},
            "emulator_latency_s": opts.latency,
        }
        return result
    except BaseException:
        failed = True
        raise
    finally:
        if receipts is not None:
            with suppress(aiohttp.ClientError, TimeoutError, OSError):
                await receipts.stop()
        worker.stop()
        emulator.stop()
        if backends is not None:
            await backends.close()
        if created:
            for problem in await stack.drop():
                note(f"celery_baseline: cleanup: {problem}")
        try:
            await _delete_broker_names(queue)
        except Exception as exc:
            note(f"celery_baseline: cleanup: rabbitmq {queue}: {exc}")
        if failed:
            note(f"celery_baseline: celery log tail:\n{worker.tail(3000)}")
        if failed or opts.keep:
            note(f"celery_baseline: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _api_key() -> str:
    from tests.emulators.sendgrid import DEFAULT_API_KEY

    return DEFAULT_API_KEY


async def celery_baseline(opts: Any) -> list[dict[str, Any]]:
    """Celery, then herald's drain with the same count; herald's line says the ratios."""
    from bench.scenarios import drain, note

    count = opts.count or (1_000 if opts.quick else 20_000)
    celery = await run_celery(opts, count)
    note(
        f"celery_baseline: celery {celery['throughput']}/s, "
        f"{celery['cpu_ms_per_notification']} ms CPU per notification; now herald"
    )
    (herald,) = await drain(replace(opts, count=count))
    herald["system"] = "herald"
    if celery.get("throughput") and herald.get("throughput"):
        herald["vs_celery"] = {
            "throughput_ratio": round(herald["throughput"] / celery["throughput"], 2),
            "cpu_per_notification_ratio": round(
                herald["herald_cpu_ms_per_notification"] / celery["cpu_ms_per_notification"], 3
            ),
            "celery_throughput": celery["throughput"],
        }
    return [celery, herald]
