"""The SendGrid emulator as the benchmarks run it: a separate process that also keeps receipts.

``tests.emulators.sendgrid.SendGridEmulator`` speaks the real protocol; this wrapper adds what a
benchmark needs and the stock CLI lacks:

* a compact receipt per accepted send (notification id, delivery id, time received, recipient
  address), for every send of the run, served incrementally at ``GET /_bench/receipts?since=N`` (the stock
  recorder keeps only the latest 10,000 requests, with their bodies);
* answer counts by status at ``GET /_bench/stats``;
* random faults at fixed rates (``--fail-503 0.2 --fail-429 0.02``), where the stock control
  endpoint only queues the next N faults;
* ``--max-seconds``: the process exits by itself after that long, whatever happens to the
  harness that started it.

Run: ``python -m bench.emulator --port 8702 --latency 0.001 [--fail-503 0.2] [--fail-429 0.02]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import time
from collections import Counter
from typing import Any

from aiohttp import web
from tests.emulators.sendgrid import DEFAULT_API_KEY, ReceivedRequest, SendGridEmulator


class BenchSendGridEmulator(SendGridEmulator):
    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        latency: float = 0.0,
        fail_503: float = 0.0,
        fail_429: float = 0.0,
        retry_after: float = 1.0,
        validate: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(api_key, validate=validate, latency=latency, max_recorded=1000)
        self.fail_503 = fail_503
        self.fail_429 = fail_429
        self.retry_after = retry_after
        self.rng = random.Random(seed)
        # (notification id, delivery id, time received, "to" address) for every send answered 2xx.
        # (A broadcast's receipts are told apart by address: one notification, many users.)
        # Tuples of strings and floats, which the garbage collector stops tracking: as lists,
        # 100,000 receipts made every full collection of this process walk them all, 120 ms
        # on average and 165 ms at worst in the scale-out flood, while every answer waited.
        self.receipts: list[tuple[Any, ...]] = []
        self.answered: Counter[int] = Counter()
        # This process's garbage-collector pauses: a stop here delays every answer, and would be
        # charged to herald's latency by the harness. By generation: count, total and longest ms.
        self.gc_pauses: dict[int, list[float]] = {g: [0, 0.0, 0.0] for g in range(3)}
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = (time.perf_counter() - self._gc_started) * 1000
        pauses = self.gc_pauses[info["generation"]]
        pauses[0] += 1
        pauses[1] += took
        pauses[2] = max(pauses[2], took)

    def _answer(
        self,
        request: web.Request,
        body: bytes,
        record: ReceivedRequest,
        status: int,
        payload: Any = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        response = super()._answer(request, body, record, status, payload, headers)
        self.answered[status] += 1
        if 200 <= status < 300:
            # One receipt per personalization: a batched send carries many recipients, each
            # with its own delivery id.
            for personalization in _personalizations(record.json):
                args = _custom_args(personalization)
                nid = args.get("herald_notification_id")
                self.receipts.append(
                    (
                        sys.intern(nid) if isinstance(nid, str) else nid,  # one copy per broadcast
                        args.get("herald_delivery_id"),
                        record.at,
                        _to_address(personalization),
                    )
                )
        return response

    async def _mail_send(self, request: web.Request) -> web.StreamResponse:
        # Read the body first (aiohttp caches it): the parent then reaches its fault pop without
        # suspending, so the fault drawn here is the one this request gets.
        await request.read()
        roll = self.rng.random()
        if roll < self.fail_503:
            self.fail_next("unavailable")
        elif roll < self.fail_503 + self.fail_429:
            self.fail_next("rate_limited", retry_after=self.retry_after, reset_in=self.retry_after)
        return await super()._mail_send(request)

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/_bench/receipts", self._bench_receipts)
        app.router.add_get("/_bench/stats", self._bench_stats)
        return app

    async def _bench_receipts(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"total": len(self.receipts), "items": self.receipts[since:]})

    async def _bench_stats(self, request: web.Request) -> web.Response:
        gc_ms = {
            f"gen{g}": {"count": int(n), "total_ms": round(total, 1), "max_ms": round(top, 1)}
            for g, (n, total, top) in self.gc_pauses.items()
        }
        answered = {str(k): v for k, v in sorted(self.answered.items())}
        return web.json_response({"answered": answered, "pid": os.getpid(), "gc": gc_ms})


def _personalizations(data: Any) -> list[Any]:
    try:
        found = data["personalizations"]
    except (KeyError, TypeError):
        return [None]
    return found if isinstance(found, list) and found else [None]


def _to_address(personalization: Any) -> str | None:
    try:
        address = personalization["to"][0]["email"]
    except (KeyError, IndexError, TypeError):
        return None
    return address if isinstance(address, str) else None


def _custom_args(personalization: Any) -> dict[str, Any]:
    try:
        args = personalization["custom_args"]
    except (KeyError, TypeError):
        return {}
    return args if isinstance(args, dict) else {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SendGrid emulator for benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--fail-503", type=float, default=0.0, help="fraction of sends answered 503")
    parser.add_argument("--fail-429", type=float, default=0.0, help="fraction of sends answered 429")
    parser.add_argument("--retry-after", type=float, default=1.0, help="seconds the 429 answers ask for")
    parser.add_argument("--validate", action="store_true", help="validate against the OpenAPI spec")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="exit after this long")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the benchmark emulator listens on the loopback interface only")
    emulator = BenchSendGridEmulator(
        args.api_key,
        latency=args.latency,
        fail_503=args.fail_503,
        fail_429=args.fail_429,
        retry_after=args.retry_after,
        validate=args.validate,
        seed=args.seed,
    )

    async def serve() -> None:
        await emulator.start(args.host, args.port)
        # The start-up heap (aiohttp, the emulators' modules: ~70,000 objects) costs ~50 ms
        # a full collection, and nothing in it is ever garbage: frozen, collections skip it
        # (as `herald serve` does). Unfrozen, this process stopped for 120 ms on average,
        # 190 ms at worst, at each of the 16 full collections of a scale-out flood.
        gc.collect()
        gc.freeze()
        print(f"bench sendgrid emulator on {emulator.url} pid {os.getpid()}", flush=True)
        started = time.monotonic()
        try:
            # A watchdog rather than a plain sleep: the harness normally stops us much earlier.
            while time.monotonic() - started < args.max_seconds:
                await asyncio.sleep(1.0)
        finally:
            await emulator.stop()

    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
