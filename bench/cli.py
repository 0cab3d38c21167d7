"""``python -m bench SCENARIO [--quick] [--mode embedded|scaleout]``: one JSON line per result on stdout.

Progress goes to stderr. The exit status is non-zero when a scenario failed to run or lost or
duplicated a notification.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.scenarios import MODES, OWN_SCENARIOS, SCENARIOS, Options, note
from bench.server import HeraldTuning


def parse(argv: list[str] | None) -> tuple[list[str], Options, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m bench", description="herald benchmarks")
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--quick", action="store_true", help="a short version (a few seconds each)")
    parser.add_argument(
        "--mode",
        default="embedded",
        choices=list(MODES),
        help="embedded: one `herald serve` on SQLite; scaleout: one `herald serve` on PostgreSQL + "
        "Redis + RabbitMQ (a fresh schema and prefixes per run, removed afterwards); split: the same "
        "servers, with herald api, a worker for critical+high, one for normal+low (nice 10) and "
        "herald scheduler as separate processes",
    )
    parser.add_argument(
        "--queue",
        default="amqp",
        choices=["amqp", "kafka"],
        help="--mode scaleout: queue.url on the shared RabbitMQ (amqp) or a private Tansu broker (kafka)",
    )
    parser.add_argument(
        "--payload",
        default="template",
        choices=["template", "inline"],
        help="template: stored template + stored users; inline: inline recipient + content",
    )
    parser.add_argument("--count", type=int, help="notifications (flood_critical: low ones)")
    parser.add_argument("--rate", type=float, action="append", dest="rates", help="accept: offered req/s")
    parser.add_argument("--duration", type=float, help="accept / flood_critical: seconds of offered load")
    parser.add_argument("--producers", type=int, default=2, help="concurrent batch requests")
    parser.add_argument("--latency", type=float, default=0.001, help="emulator answer latency, seconds")
    parser.add_argument("--concurrency", type=int, help="herald email send slots")
    parser.add_argument("--reserved-high", type=int, help="herald slots reserved for critical/high")
    parser.add_argument("--max-connections", type=int, help="herald keep-alive connections to the provider")
    parser.add_argument("--router-batch", type=int, help="herald [worker] router_batch")
    parser.add_argument(
        "--worker-processes", type=int, help="herald [server] worker_processes (sends in children)"
    )
    parser.add_argument(
        "--worker-lanes", help="herald [server] worker_lanes, comma-separated (the rest are sent by serve)"
    )
    parser.add_argument("--worker-nice", type=int, help="herald [server] worker_nice (children's niceness)")
    parser.add_argument(
        "--serve-lanes", help="herald [server] serve_lanes, comma-separated ('' for none: children only)"
    )
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="hard bound per scenario")
    parser.add_argument(
        "--herald-patches",
        default="",
        help="experiment: run herald with these bench/patched.py patches (comma-separated)",
    )
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (config, db, logs)")
    parser.add_argument("--output", type=Path, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    tuning = HeraldTuning()
    for name in (
        "concurrency",
        "reserved_high",
        "max_connections",
        "router_batch",
        "worker_processes",
        "worker_nice",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(tuning, name, value)
    if args.worker_lanes:
        tuning.worker_lanes = [x.strip() for x in args.worker_lanes.split(",") if x.strip()]
    if args.serve_lanes is not None:
        tuning.serve_lanes = [x.strip() for x in args.serve_lanes.split(",") if x.strip()]
    opts = Options(
        quick=args.quick,
        mode=args.mode,
        queue=args.queue,
        payload=args.payload,
        count=args.count,
        rates=args.rates or [],
        duration=args.duration,
        producers=args.producers,
        latency=args.latency,
        tuning=tuning,
        keep=args.keep,
        patches=[p for p in args.herald_patches.split(",") if p],
        max_seconds=args.max_seconds,
    )
    names = list(OWN_SCENARIOS) if args.scenario == "all" else [args.scenario]
    return names, opts, args.output


def emit(result: dict[str, Any], output: Path | None) -> None:
    if os.environ.get("CODE"):  # which checkout ran (old/new comparisons through PYTHONPATH)
        result["code"] = os.environ["CODE"]
    line = json.dumps(result, separators=(",", ":"))
    print(line, flush=True)
    if output is not None:
        with output.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


async def run(names: list[str], opts: Options, output: Path | None) -> int:
    status = 0
    for name in names:
        started = time.monotonic()
        try:
            results = await SCENARIOS[name](opts)
        except Exception as exc:  # report it as a result line: CI must see a broken harness
            note(f"{name}: failed: {exc}")
            emit(
                {"scenario": name, "mode": opts.mode, "quick": opts.quick, "error": str(exc)[-2000:]}, output
            )
            status = 1
            continue
        for result in results:
            result["scenario_wall_s"] = round(time.monotonic() - started, 1)
            emit(result, output)
            if result.get("lost") or result.get("dup") or result.get("unexpected"):
                status = 1
    return status


def main(argv: list[str] | None = None) -> None:
    names, opts, output = parse(argv)
    sys.exit(asyncio.run(run(names, opts, output)))
