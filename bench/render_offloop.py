"""Rendering of user templates: throughput of the bounded renderer and the cost of running it
off the event loop, a worker thread against a process pool.

    python -m bench.render_offloop [--seconds 3] [--old PATH]

``--old`` names an older ``services/rendering.py`` (e.g. ``git show main:src/herald/services/
rendering.py > /tmp/old_rendering.py``): both are measured in the same process, in alternating
rounds, on the same variant (subject, text and HTML with variables, a filter and a loop), with
compiled templates cached as on the hot path. Then each render is handed to a thread pool, and
to a process pool (the variant and its context pickled to a worker and the result back), from
an event loop, one at a time and 64 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from types import ModuleType
from typing import Any

from herald.services import rendering

VARIANT = {
    "subject": "Order {{ data.order_id }} shipped, {{ user.data.first_name|default('there') }}",
    "text": (
        "Hello {{ user.data.first_name }},\n{% for item in data['items'] %}"
        "- {{ item.name }} x{{ item.qty }}\n{% endfor %}Total: {{ '%.2f'|format(data.total) }}"
    ),
    "html": (
        "<p>Hello {{ user.data.first_name }}</p><ul>{% for item in data['items'] %}<li>{{ item.name|upper }}"
        "</li>{% endfor %}</ul><p>{{ data.total }}</p>"
    ),
}
CONTEXT = {
    "data": {
        "order_id": "A-1042",
        "items": [{"name": f"thing {i}", "qty": i} for i in range(5)],
        "total": 99.5,
    },
    "user": {"id": "u1", "email": "u1@example.com", "data": {"first_name": "Ann"}},
    "notification": {"id": "ntf_1", "category": "transactional", "priority": "high"},
}


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("old_rendering", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rate(render: Callable[..., Any], seconds: float) -> float:
    """Renders per second of this process's CPU time (the machine is shared: wall time would
    measure the other processes too)."""
    render(VARIANT, CONTEXT)  # compile once (cached), as on the hot path
    n, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(200):
            render(VARIANT, CONTEXT)
        n += 200
    return n / elapsed


def _render(variant: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    return rendering.render_variant(variant, context)


async def _offloop(pool: Executor, seconds: float, in_flight: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(pool, _render, VARIANT, CONTEXT)  # warm (process start, compile)
    latencies: list[float] = []
    done = 0
    start = time.perf_counter()

    async def one() -> None:
        nonlocal done
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            await loop.run_in_executor(pool, _render, VARIANT, CONTEXT)
            latencies.append(time.perf_counter() - t)
            done += 1

    await asyncio.gather(*(one() for _ in range(in_flight)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "renders_per_s": round(done / elapsed),
        "p50_us": round(statistics.median(latencies) * 1e6),
        "p99_us": round(latencies[int(len(latencies) * 0.99)] * 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--old", help="an older rendering.py to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    out: dict[str, Any] = {}
    old = _load(args.old) if args.old else None
    new_rates, old_rates = [], []
    for _ in range(args.rounds):  # alternating, back to back
        if old is not None:
            old_rates.append(_rate(old.render_variant, args.seconds))
        new_rates.append(_rate(rendering.render_variant, args.seconds))
    out["inline_new_renders_per_s"] = [round(r) for r in new_rates]
    if old_rates:
        out["inline_old_renders_per_s"] = [round(r) for r in old_rates]
        out["new_over_old"] = round(statistics.median(new_rates) / statistics.median(old_rates), 3)
    with ThreadPoolExecutor(max_workers=2) as threads:
        out["thread_1_in_flight"] = asyncio.run(_offloop(threads, args.seconds, 1))
        out["thread_64_in_flight"] = asyncio.run(_offloop(threads, args.seconds, 64))
    with ProcessPoolExecutor(max_workers=2) as procs:
        out["process_1_in_flight"] = asyncio.run(_offloop(procs, args.seconds, 1))
        out["process_64_in_flight"] = asyncio.run(_offloop(procs, args.seconds, 64))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
