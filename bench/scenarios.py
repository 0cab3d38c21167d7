"""The scenarios. Each starts a fresh emulator and a fresh herald, drives load, and returns one
result (a JSON-able dict; see BENCHMARKS.md for every field).

Times: accept times are taken in this process (``time.time()``), provider receipts in the
emulator's process (``time.time()`` when the request arrived); same machine, same clock.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.backends import BackendMonitor, ScaleoutStack
from bench.celery_baseline import celery_baseline
from bench.load import TEMPLATE, HeraldClient, HttpError, Payloads, Receipts, settle
from bench.population import generate_postgres, generate_sqlite, index_of
from bench.procs import (
    Service,
    Usage,
    calibration_ms,
    emulator_service,
    loadavg,
    machine_busy_seconds,
    peak_rss_mb,
    reset_peak_rss,
    self_cpu_seconds,
    source_version,
)
from bench.server import HeraldServer, HeraldTuning

BATCH = 1000
HERALD_PROCESSES = "one `herald serve` (api, router, workers, scheduler, outbox relay in one process)"
MODES = ("embedded", "scaleout", "split")


@dataclass
class Options:
    quick: bool = False
    mode: str = "embedded"
    queue: str = "amqp"  # --mode scaleout: amqp (the shared RabbitMQ) or kafka (a private Tansu)
    payload: str = "template"
    count: int | None = None  # overrides the scenario's notification count
    rates: list[float] = field(default_factory=list)  # accept: offered loads
    duration: float | None = None  # accept / flood_critical: seconds of offered load
    producers: int = 2  # concurrent batch requests
    latency: float = 0.001  # emulator answer latency, seconds
    tuning: HeraldTuning = field(default_factory=HeraldTuning)
    keep: bool = False
    patches: list[str] = field(default_factory=list)  # bench/patched.py experiments
    max_seconds: float = 1800.0  # hard bound on one scenario (the emulator exits after it too)


def note(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def percentiles(values: Iterable[float]) -> dict[str, float | None]:
    data = sorted(values)
    if not data:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}

    def rank(q: float) -> float:
        # nearest rank
        index = max(0, min(len(data) - 1, round(q * len(data) + 0.5) - 1))
        return round(data[index] * 1000, 2)

    return {
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": round(data[-1] * 1000, 2),
        "n": len(data),
    }


def _processes(worker_processes: int | None, mode: str = "embedded") -> str:
    if mode == "split":
        return (
            "herald api + herald worker --lanes critical,high + herald worker --lanes normal,low "
            "--nice 10 + herald scheduler"
        )
    if worker_processes is None:
        return "one `herald serve` with herald's default worker children (from the cores)"
    if not worker_processes:
        return HERALD_PROCESSES
    return f"one `herald serve` (api, router, scheduler) + {worker_processes} worker children (sends)"


@dataclass
class Env:
    name: str
    opts: Options
    workdir: Path
    herald: HeraldServer
    emulator: Service
    client: HeraldClient
    receipts: Receipts
    payloads: Payloads
    version: str = ""
    stack: ScaleoutStack | None = None  # --mode scaleout: this run's schema and prefixes
    backends: BackendMonitor | None = None
    _loadgen_cpu: float = 0.0
    _load_start: float = 0.0
    _machine_busy: float = 0.0
    _calibration_start: float = 0.0

    def mark(self) -> None:
        self.herald.service.mark()
        self.emulator.mark()
        self._loadgen_cpu = self_cpu_seconds()
        reset_peak_rss()
        self._load_start = loadavg()
        self._calibration_start = calibration_ms()
        self._machine_busy = machine_busy_seconds()
        if self.backends is not None:
            self.backends.mark()

    def usage(self) -> dict[str, Any]:
        ours = {
            "herald": self.herald.service.usage(),
            "emulator": self.emulator.usage(),
            "loadgen": Usage(self_cpu_seconds() - self._loadgen_cpu, peak_rss_mb()),
        }
        out: dict[str, Any] = {name: u.as_json() for name, u in ours.items()}
        ours_cpu = sum(u.cpu_s for u in ours.values())
        if self.backends is not None:
            # PostgreSQL (herald's backends; the server's background processes), Redis, RabbitMQ.
            backends = self.backends.usage()
            out["backends"] = backends
            ours_cpu += self.backends.cpu_total(backends)
        # Everything else the machine ran meanwhile (other engineers' tests): the contention.
        busy = machine_busy_seconds() - self._machine_busy
        out["others_cpu_s"] = round(max(0.0, busy - ours_cpu), 2)
        return out

    def check_alive(self) -> None:
        for service in (self.herald.service, self.emulator):
            if not service.alive():
                raise RuntimeError(f"{service.name} died during the run:\n{service.tail()}")

    def base(self, count: int) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "mode": self.opts.mode,
            **({"queue": self.opts.queue} if self.opts.mode == "scaleout" else {}),
            "quick": self.opts.quick,
            "payload": self.opts.payload,
            "count": count,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "herald_version": self.version,
            "herald_processes": _processes(self.opts.tuning.worker_processes, self.opts.mode),
            **({"scaleout": self.stack.describe()} if self.stack is not None else {}),
            **({"herald_patches": self.opts.patches} if self.opts.patches else {}),
        }

    def outcome(self, accepted: dict[str, float]) -> dict[str, int]:
        got = self.receipts.first
        return {
            "accepted": len(accepted),
            "received": sum(1 for n in accepted if n in got),
            "lost": sum(1 for n in accepted if n not in got),
            "dup": self.receipts.duplicates(),
            "unexpected": sum(1 for n in got if n not in accepted),
        }

    async def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        result["processes"] = self.usage()
        if result.get("accepted"):
            # Robust to a busy machine, unlike throughput: herald's CPU per notification.
            cpu_ms = 1000 * result["processes"]["herald"]["cpu_s"] / result["accepted"]
            result["herald_cpu_ms_per_notification"] = round(cpu_ms, 3)
        emulator_stats = await self.receipts.emulator_stats()
        result["emulator_answers"] = emulator_stats["answered"]
        result["emulator_gc"] = emulator_stats.get("gc")
        stats = await self.client.stats()
        result["herald_statuses"] = stats["by_status"]
        result["ambiguous_sends"] = stats.get("ambiguous_sends")
        result["loadavg"] = {"start": self._load_start, "end": loadavg()}
        # A fixed Python loop before and after (ms; lower is a faster machine): compare runs
        # of different days by this, not by the calendar.
        result["calibration_ms"] = {"start": self._calibration_start, "end": calibration_ms()}
        result["tuning"] = self.opts.tuning.as_json()
        result["emulator_latency_s"] = self.opts.latency
        if result.get("lost"):
            result["throughput"] = None  # a run that loses notifications has no throughput
        return result


@asynccontextmanager
async def environment(
    name: str,
    opts: Options,
    *,
    users: int,
    tuning: HeraldTuning | None = None,
    receipt_key: str = "notification",
    **emulator_kw: Any,
) -> AsyncIterator[Env]:
    if opts.mode not in MODES:
        raise SystemExit(f"--mode {opts.mode}: expected one of {', '.join(MODES)}")
    workdir = Path(tempfile.mkdtemp(prefix=f"herald-bench-{name}-"))
    emulator, emulator_url = emulator_service(
        workdir, latency=opts.latency, max_seconds=opts.max_seconds, **emulator_kw
    )
    stack = ScaleoutStack(queue=opts.queue) if opts.mode in ("scaleout", "split") else None
    if stack is not None and opts.queue == "kafka":
        stack.start_kafka(workdir)
    herald = HeraldServer(
        workdir,
        emulator_url,
        tuning or opts.tuning,
        opts.patches,
        stack.sections() if stack else None,
        split=opts.mode == "split",
    )
    client: HeraldClient | None = None
    receipts: Receipts | None = None
    backends: BackendMonitor | None = None
    payloads = Payloads(opts.payload, users)
    failed = False
    stack_created = False
    try:
        if stack is not None:
            await stack.create()
            stack_created = True
            backends = BackendMonitor(stack)
            note(
                f"{name}: scaleout: schema {stack.schema}, cache prefix {stack.cache_prefix!r}, "
                f"queue prefix {stack.prefix!r}; redis pid {backends.redis_pid}, "
                f"{backends.queue_name} pid {backends.queue_pid}"
            )
        emulator.start()
        await emulator.wait_ready(emulator_url + "/_bench/stats")
        await herald.start()
        if stack is not None and opts.mode == "split":
            from herald.adapters.queue.amqp import lane_queue

            await stack.wait_consumers([lane_queue(stack.prefix, "email", rank) for rank in (0, 3)])
        client = HeraldClient(herald.url, herald.key)
        await client.setup(payloads)
        receipts = Receipts(emulator_url, key=receipt_key)
        await receipts.start()
        env = Env(
            name,
            opts,
            workdir,
            herald,
            emulator,
            client,
            receipts,
            payloads,
            source_version(),
            stack=stack,
            backends=backends,
        )
        note(f"{name}: herald pid {herald.service.pid}, emulator pid {emulator.pid}, workdir {workdir}")
        env.mark()
        yield env
    except BaseException:
        failed = True
        raise
    finally:
        if receipts is not None:
            with suppress(aiohttp.ClientError, TimeoutError, OSError):
                await receipts.stop()
        if client is not None:
            await client.close()
        herald.service.stop()
        emulator.stop()
        if backends is not None:
            await backends.close()
        if stack is not None and stack_created:
            if opts.keep:
                note(f"{name}: kept schema {stack.schema} and prefix {stack.prefix} (--keep)")
            else:
                for problem in await stack.drop():
                    note(f"{name}: cleanup: {problem}")
        if stack is not None and stack.kafka is not None:
            stack.kafka.stop()  # a private broker never outlives its run (--keep included)
        if failed:
            note(f"{name}: herald log tail:\n{herald.service.tail(3000)}")
        if opts.keep or failed:
            note(f"{name}: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def push_batches(
    env: Env,
    indices: range,
    starts: dict[str, float],
    *,
    priority: str | None = None,
    extra: dict[str, Any] | None = None,
) -> list[float]:
    """Send ``indices`` as batches of 1,000 from ``opts.producers`` concurrent requests.

    Records each accepted notification's start time (when its batch was sent) in ``starts``;
    returns each batch's round-trip time."""
    pending = [indices[i : i + BATCH] for i in range(0, len(indices), BATCH)]
    pending.reverse()
    round_trips: list[float] = []

    async def producer() -> None:
        while pending:
            chunk = pending.pop()
            items = [env.payloads.item(i, priority) | (extra or {}) for i in chunk]
            sent = time.time()
            ids = await env.client.send_batch(items)
            round_trips.append(time.time() - sent)
            for nid in ids:
                starts[nid] = sent

    await asyncio.gather(*(producer() for _ in range(max(1, env.opts.producers))))
    return round_trips


async def open_loop(rate: float, total: int, send: Callable[[int, float], Awaitable[None]]) -> list[float]:
    """Start ``send(i, scheduled_wall_time)`` at ``rate`` per second regardless of how long the
    earlier ones take (open loop: a slow server cannot slow the offered load down). Returns
    each start's lag behind its schedule (the load generator's own delay)."""
    loop = asyncio.get_running_loop()
    t0_loop = loop.time() + 0.05
    t0_wall = time.time() + 0.05
    tasks: list[asyncio.Task[None]] = []
    lags: list[float] = []
    i = 0
    while i < total:
        elapsed = loop.time() - t0_loop
        due = min(total, int(elapsed * rate) + 1)
        while i < due:
            lags.append(max(0.0, elapsed - i / rate))
            tasks.append(asyncio.create_task(send(i, t0_wall + i / rate)))
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, t0_loop + i / rate - loop.time()))
    await asyncio.gather(*tasks)
    return lags


def _deadline(opts: Options) -> float:
    return time.monotonic() + opts.max_seconds


# Scenarios ------------------------------------------------------------------------------------


async def drain(opts: Options) -> list[dict[str, Any]]:
    """N single-recipient email notifications by batches of 1,000; the provider answers in
    ~1 ms. Throughput: notifications from the first batch sent to the last provider receipt.
    Latency: batch sent → provider receipt, per notification."""
    count = opts.count or (2_000 if opts.quick else 50_000)
    users = 200 if opts.quick else 1_000
    async with environment("drain", opts, users=users) as env:
        starts: dict[str, float] = {}
        begin = time.time()
        round_trips = await push_batches(env, range(count), starts)
        accepted_at = time.time()
        note(f"drain: {len(starts)} accepted in {accepted_at - begin:.1f}s; waiting for delivery")
        why = await settle(env.client, env.receipts, count, deadline=_deadline(opts), stall=60)
        env.check_alive()
        result = env.base(count) | env.outcome(starts)
        got = env.receipts.first
        received = [got[n] for n in starts if n in got]
        last = max(received) if received else begin
        result |= {
            "throughput": round(len(received) / (last - begin), 1) if received else None,
            "latency_of": "batch sent -> provider receipt",
            "latency_ms": percentiles(got[n] - t for n, t in starts.items() if n in got),
            "duration_s": round(last - begin, 2),
            "accept_rate": round(len(starts) / (accepted_at - begin), 1),
            "batch_round_trip_ms": percentiles(round_trips),
            "settled": why,
        }
        return [await env.finish(result)]


async def accept(opts: Options) -> list[dict[str, Any]]:
    """``POST /v1/notifications`` at fixed offered loads (open loop), deliveries running in the
    same herald. Latency: scheduled send time → 202 (a late start counts against herald's
    figure only in ``start_lag_ms``, reported apart). Throughput: 202s per second."""
    rates = opts.rates or ([500.0] if opts.quick else [500.0, 2000.0])
    duration = opts.duration or (2.0 if opts.quick else 30.0)
    results = []
    for rate in rates:
        results.append(await _accept_at(opts, rate, duration))
    return results


async def _accept_at(opts: Options, rate: float, duration: float) -> dict[str, Any]:
    total = opts.count or int(rate * duration)
    users = 200 if opts.quick else 1_000
    async with environment("accept", opts, users=users) as env:
        starts: dict[str, float] = {}
        latencies: list[float] = []
        done_at: list[float] = []
        errors: dict[str, int] = {}

        async def send(i: int, scheduled: float) -> None:
            try:
                status, body = await env.client.request("POST", "/v1/notifications", env.payloads.item(i))
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, body = -1, type(exc).__name__
            now = time.time()
            if status == 202:
                starts[body["id"]] = scheduled
                latencies.append(now - scheduled)
                done_at.append(now)
            else:
                key = str(status) if status > 0 else str(body)
                errors[key] = errors.get(key, 0) + 1

        begin = time.time()
        lags = await open_loop(rate, total, send)
        note(f"accept@{rate:g}: {len(starts)}/{total} accepted; waiting for delivery")
        why = await settle(env.client, env.receipts, len(starts), deadline=_deadline(opts), stall=60)
        env.check_alive()
        got = env.receipts.first
        window = (max(done_at) - begin) if done_at else 0.0
        result = env.base(total) | env.outcome(starts)
        result |= {
            "offered_rps": rate,
            "offered_s": duration,
            "throughput": round(len(starts) / window, 1) if window else None,
            "latency_of": "scheduled send -> 202 (open loop)",
            "latency_ms": percentiles(latencies),
            "errors": errors,
            "start_lag_ms": percentiles(lags),
            "e2e_latency_ms": percentiles(got[n] - t for n, t in starts.items() if n in got),
            "settled": why,
        }
        return await env.finish(result)


async def flood_critical(opts: Options) -> list[dict[str, Any]]:
    """A backlog of ``low`` notifications, then ``critical`` ones at 10/s while it drains.

    The low flood is accepted by batches with one ``send_at`` (the release time) for all, so
    that at release the whole flood is queued at once: a real backlog, not one that drains
    as fast as it is accepted. One second after release, critical notifications arrive at
    10/s (open loop, single POSTs). Latency: critical scheduled send → provider receipt.
    ``low_backlog_*``: low notifications not yet at the provider when the critical phase
    started / ended (the queue the critical ones had to overtake). Throughput: low
    notifications from release to the last low receipt."""
    low = opts.count or (2_000 if opts.quick else 100_000)
    rate = 10.0
    duration = opts.duration or (3.0 if opts.quick else 60.0)
    users = 200 if opts.quick else 1_000
    async with environment("flood_critical", opts, users=users) as env:
        low_starts: dict[str, float] = {}
        crit_starts: dict[str, float] = {}
        crit_accept: list[float] = []
        errors: dict[str, int] = {}
        begin = time.time()
        # Accepting runs at 1,000-3,000/s here: 800/s leaves a margin before the release.
        release = begin + max(2.0, low / 800)
        send_at = datetime.fromtimestamp(release, UTC).isoformat()
        await push_batches(env, range(low), low_starts, priority="low", extra={"send_at": send_at})
        flood_accepted = time.time()
        await asyncio.sleep(max(0.0, release + 1.0 - time.time()))
        await env.receipts.poll()
        backlog_start = sum(1 for n in low_starts if n not in env.receipts.first)
        note(
            f"flood_critical: {len(low_starts)} low accepted in {flood_accepted - begin:.1f}s, "
            f"released; backlog {backlog_start}; sending critical"
        )

        async def send(i: int, scheduled: float) -> None:
            try:
                status, body = await env.client.request(
                    "POST", "/v1/notifications", env.payloads.item(low + i, "critical")
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, body = -1, type(exc).__name__
            if status == 202:
                crit_starts[body["id"]] = scheduled
                crit_accept.append(time.time() - scheduled)
            else:
                key = str(status) if status > 0 else str(body)
                errors[key] = errors.get(key, 0) + 1

        crit_total = int(rate * duration)
        await open_loop(rate, crit_total, send)
        await env.receipts.poll()
        backlog_end = sum(1 for n in low_starts if n not in env.receipts.first)
        everything = low_starts | crit_starts
        why = await settle(env.client, env.receipts, len(everything), deadline=_deadline(opts), stall=60)
        env.check_alive()
        got = env.receipts.first
        low_received = [got[n] for n in low_starts if n in got]
        last_low = max(low_received) if low_received else release
        result = env.base(low + crit_total) | env.outcome(everything)
        result |= {
            "low": len(low_starts),
            "critical": len(crit_starts),
            "critical_rps": rate,
            "critical_s": duration,
            "throughput": round(len(low_received) / (last_low - release), 1) if low_received else None,
            "throughput_of": "low notifications/s, release (send_at) -> last low receipt",
            "flood_accept_s": round(flood_accepted - begin, 2),
            "latency_of": "critical scheduled send -> provider receipt",
            "latency_ms": percentiles(got[n] - t for n, t in crit_starts.items() if n in got),
            "critical_lost": sum(1 for n in crit_starts if n not in got),
            "critical_accept_ms": percentiles(crit_accept),
            # Only the critical ones sent while low ones were still queued (before the last low
            # receipt): a herald that drains the flood fast leaves the rest an empty queue.
            "critical_behind_backlog_ms": percentiles(
                got[n] - t for n, t in crit_starts.items() if n in got and t < last_low
            ),
            "low_latency_ms": percentiles(got[n] - release for n in low_starts if n in got),
            "low_backlog_start": backlog_start,
            "low_backlog_end": backlog_end,
            "errors": errors,
            "settled": why,
        }
        return [await env.finish(result)]


async def flaky(opts: Options) -> list[dict[str, Any]]:
    """The drain against a provider that answers 20% of sends 503 and 2% 429 with
    ``Retry-After: 1``, retry schedule [0, 1, 2, 5] s. What the schedule exhausts goes to the
    dead-letter queue; the harness then replays it, as an operator would, until everything is
    delivered (``dead_lettered`` and ``replay_rounds`` say how often that was needed)."""
    count = opts.count or (600 if opts.quick else 20_000)
    users = 200 if opts.quick else 1_000
    tuning = HeraldTuning(**{**opts.tuning.as_json(), "retry_schedule": [0.0, 1.0, 2.0, 5.0]})
    async with environment(
        "flaky", opts, users=users, tuning=tuning, fail_503=0.2, fail_429=0.02, retry_after=1.0
    ) as env:
        starts: dict[str, float] = {}
        begin = time.time()
        await push_batches(env, range(count), starts)
        note(f"flaky: {len(starts)} accepted; waiting for delivery")
        deadline = _deadline(opts)
        why = await settle(env.client, env.receipts, count, deadline=deadline, stall=60)
        first_pass = [env.receipts.first[n] for n in starts if n in env.receipts.first]
        dead_lettered = 0
        rounds = 0
        while len(env.receipts.first) < count and rounds < 5 and time.monotonic() < deadline:
            dead = int((await env.client.stats())["by_status"].get("dead", 0))
            if not dead:
                break
            rounds += 1
            dead_lettered += dead
            replayed = await env.client.replay_dead_letters()
            note(f"flaky: {dead} dead-lettered; replayed {replayed} (round {rounds})")
            why = await settle(env.client, env.receipts, count, deadline=deadline, stall=60)
        env.check_alive()
        got = env.receipts.first
        received = [got[n] for n in starts if n in got]
        last = max(received) if received else begin
        result = env.base(count) | env.outcome(starts)
        result |= {
            "throughput": round(len(received) / (last - begin), 1) if received else None,
            "latency_of": "batch sent -> provider receipt (retries included)",
            "latency_ms": percentiles(got[n] - t for n, t in starts.items() if n in got),
            "duration_s": round(last - begin, 2),
            "fault_rates": {"503": 0.2, "429": 0.02, "retry_after_s": 1.0},
            "first_pass_delivered": len(first_pass),
            "first_pass_s": round(max(first_pass) - begin, 2) if first_pass else None,
            "dead_lettered": dead_lettered,
            "replay_rounds": rounds,
            "settled": why,
        }
        return [await env.finish(result)]


BROADCAST_TOPIC = "bench-broadcast"


def _vm_kib(pid: int, field_name: str) -> int | None:
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


async def broadcast(opts: Options) -> list[dict[str, Any]]:
    """One notification to a topic of N subscribers (1,000,000; 5,000 with ``--quick``), to
    completion. ``--payload inline``: the same inline content for every subscriber (no per-user
    field), which herald sends in provider batches (SendGrid: 1,000 recipients a request).
    The subscribers (users with an email address and ``data.name``) are written
    straight into herald's database before the measured window (bench/population.py); the
    notification uses the stored template, category ``system`` (preferences are checked for
    every recipient), email only.

    Receipts are keyed by recipient address: ``lost`` = subscribers the provider never
    received a message for, ``dup`` = messages beyond the first for the same subscriber,
    ``unexpected`` = messages to anyone else. Time: ``POST`` sent → last provider receipt;
    ``throughput``: deliveries/s over that time; ``latency_ms``: ``POST`` sent → each
    subscriber's receipt. ``routed_s``: when herald reported every recipient routed (polled
    every 2 s through ``GET /v1/notifications?limit=1``, which does not load the deliveries).
    herald's peak RSS is ``processes.herald.peak_rss_mb`` (VmHWM, the whole process life)."""
    count = opts.count or (5_000 if opts.quick else 1_000_000)
    async with environment("broadcast", opts, users=0, receipt_key="user") as env:
        await env.client.must("PUT", f"/v1/topics/{BROADCAST_TOPIC}", {"name": "bench broadcast"})
        generated = time.monotonic()
        if env.stack is not None:
            await asyncio.to_thread(generate_postgres, env.stack.database_url, BROADCAST_TOPIC, count)
        else:
            await asyncio.to_thread(generate_sqlite, env.workdir / "herald.db", BROADCAST_TOPIC, count)
        topic = await env.client.must("GET", f"/v1/topics/{BROADCAST_TOPIC}")
        if topic["subscribers"] != count:
            raise RuntimeError(f"topic has {topic['subscribers']} subscribers, expected {count}")
        note(f"broadcast: {count} subscribers generated in {time.monotonic() - generated:.1f}s")
        pid = env.herald.service.pid
        rss_before = _vm_kib(pid, "VmRSS")
        env.mark()  # also restarts the window's CPU figures after the generation
        body: dict[str, Any] = {
            "to": {"topic": BROADCAST_TOPIC},
            "template": TEMPLATE,
            "data": {"code": "000000"},
            "channels": ["email"],
            "category": "system",
        }
        if opts.payload == "inline":
            # Identical content for everyone (no per-user field): what a provider batch can carry.
            del body["template"], body["data"]
            body["content"] = {
                "subject": "Scheduled maintenance tonight",
                "text": "herald will be down from 22:00 to 22:15 UTC.",
                "html": "<p>herald will be down from <b>22:00 to 22:15 UTC</b>.</p>",
            }
        begin = time.time()
        answer = await env.client.must("POST", "/v1/notifications", body, ok=(202,))
        accepted_ms = round((time.time() - begin) * 1000, 2)
        nid = answer["id"]
        progress: dict[str, Any] = {"routed_at": None, "samples": []}

        async def watch() -> None:
            while True:
                await asyncio.sleep(2.0)
                with suppress(aiohttp.ClientError, TimeoutError, HttpError):
                    page = await env.client.must("GET", "/v1/notifications?limit=1")
                    n = next((x for x in page["items"] if x["id"] == nid), None)
                    if n is None:
                        continue
                    now = time.time()
                    received = len(env.receipts.first)
                    rss = _vm_kib(pid, "VmRSS")
                    rss_mb = round(rss / 1024, 1) if rss else None
                    progress["samples"].append(
                        [round(now - begin, 1), n["recipients_routed"], received, rss_mb]
                    )
                    if len(progress["samples"]) % 15 == 1:
                        note(
                            f"broadcast: {now - begin:.0f}s routed {n['recipients_routed']}/{count}, "
                            f"received {received}, herald RSS {rss and rss // 1024} MB"
                        )
                    routed = n["status"] != "routing" and n["recipients_routed"] >= count
                    if progress["routed_at"] is None and routed:
                        progress["routed_at"] = now
                        progress["status"] = n["status"]

        watcher = asyncio.create_task(watch())
        try:
            # settle() judges "idle" by deliveries in progress: none exist before routing starts,
            # so wait for routing to finish first (or to stop moving for a minute).
            deadline = _deadline(opts)
            moved_at, last_routed = time.monotonic(), -1
            while progress["routed_at"] is None and time.monotonic() < deadline:
                env.check_alive()
                routed_now = progress["samples"][-1][1] if progress["samples"] else 0
                if routed_now != last_routed:
                    moved_at, last_routed = time.monotonic(), routed_now
                elif time.monotonic() - moved_at > 60:
                    break
                await asyncio.sleep(0.5)
            env.receipts.last_change = time.monotonic()
            why = await settle(env.client, env.receipts, count, deadline=deadline, stall=60)
        finally:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
        env.check_alive()
        got = env.receipts.first
        expected_received = [at for addr, at in got.items() if index_of(addr, count) is not None]
        last = max(expected_received) if expected_received else begin
        result = env.base(count) | {
            "notifications": 1,
            "accepted_of": "recipients of the one topic notification (deliveries expected)",
            "accepted": count,
            "received": len(expected_received),
            "lost": count - len(expected_received),
            "dup": env.receipts.duplicates(),
            "unexpected": len(got) - len(expected_received),
            "lost_and_dup_of": "per subscriber (receipts keyed by recipient address), not per notification",
        }
        duration = last - begin
        result |= {
            "notification_id": nid,
            "subscribers": count,
            "throughput": round(len(expected_received) / duration, 1) if expected_received else None,
            "throughput_of": "deliveries/s, POST sent -> last provider receipt",
            "duration_s": round(duration, 2),
            "latency_of": "POST sent -> provider receipt, per subscriber",
            "latency_ms": percentiles(at - begin for at in expected_received),
            "post_202_ms": accepted_ms,
            "routed_s": round(progress["routed_at"] - begin, 1) if progress["routed_at"] else None,
            "herald_rss_before_mb": round(rss_before / 1024, 1) if rss_before else None,
            "progress_of": "[s since POST, recipients routed, subscribers received, herald RSS MB]",
            "progress": progress["samples"][:: max(1, len(progress["samples"]) // 60)],
            "targets": {"duration_s": 600, "herald_peak_rss_mb": 300, "subscribers": 1_000_000},
            "settled": why,
        }
        result = await env.finish(result)
        result["herald_cpu_ms_per_delivery"] = result.pop("herald_cpu_ms_per_notification", None)
        return [result]


SCENARIOS: dict[str, Callable[[Options], Awaitable[list[dict[str, Any]]]]] = {
    "drain": drain,
    "accept": accept,
    "flood_critical": flood_critical,
    "flaky": flaky,
    "broadcast": broadcast,
    "celery_baseline": celery_baseline,
}
# `all` runs herald's own scenarios; the Celery baseline needs Celery and the scale-out servers.
OWN_SCENARIOS = [name for name in SCENARIOS if name != "celery_baseline"]
