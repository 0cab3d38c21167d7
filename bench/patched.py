"""Run herald with diagnostic patches applied at run time, to look inside a benchmark run.

This is an experiment tool, not part of herald: ``src/`` is left untouched. (It held run-time
prototypes of the fixes the first benchmark session recommended; those are in ``src/`` now:
prepared claim statements, one executemany for results, batch user lookups, cached API keys,
an async container dependency.)

    python -m bench.patched PATCH[,PATCH...] serve --config herald.toml
    python -m bench drain --herald-patches tx_census --keep

Patches:

* ``tx_census``: counts database transactions by operation, into ``tx_census.txt`` in herald's
  working folder (run with ``--keep`` to read it).
* ``extra_worker``: ``herald serve`` plus one ``herald worker`` child process on the same
  configuration; the child's CPU and peak RSS go to ``extra_worker.txt``.
* ``latency_probe``: how long urgent (API) transactions wait for the database thread and run,
  how long batch transactions run, and the event loop's lag, into ``latency_probe.txt``.

The second session's candidate fixes (``claim_pk``, ``expiry_index``, ``outbox_priority``) are in
``src/`` now as well: the SQLite claim and expiry sweep written ``+status``, a partial index on
``deliveries(expires_at)``, and the outbox relayed by priority first (migration 0004).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

PATCHES: dict[str, Callable[[], None]] = {}


def patch(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        PATCHES[name] = fn
        return fn

    return register


@patch("latency_probe")
def _latency_probe() -> None:
    """Experiment: where an urgent (API) transaction's time goes: queue wait vs run, and the
    longest transactions ahead of it; plus event-loop lag. Written to latency_probe.txt."""
    import asyncio
    import threading
    from pathlib import Path

    from herald.adapters.store import database
    from herald.domain import urgency

    stats: dict[str, list[float]] = {"urgent_wait": [], "urgent_run": [], "normal_run": [], "loop_lag": []}
    original = database.Database._tx

    def _tx(self: Any, fn: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, fn)
        finally:
            kind = getattr(fn, "_probe_kind", "normal")
            stats[f"{kind}_run"].append(time.perf_counter() - t0)

    original_run = database.Database.run

    async def run(self: Any, fn: Any) -> Any:
        kind = "urgent" if urgency.current() == urgency.URGENT else "normal"
        submitted = time.perf_counter()

        def wrapped(c: Any) -> Any:
            if kind == "urgent":
                stats["urgent_wait"].append(time.perf_counter() - submitted)
            return fn(c)

        wrapped._probe_kind = kind  # type: ignore[attr-defined]
        return await original_run(self, wrapped)

    database.Database._tx = _tx  # type: ignore[method-assign]
    database.Database.run = run  # type: ignore[method-assign]

    # How long a transaction waits for the lock file (another process writing).
    import contextlib
    import fcntl

    @contextlib.contextmanager
    def writer_lock(self: Any) -> Any:
        fd = self._lock_fd
        if fd is None:
            yield
            return
        t0 = time.perf_counter()
        fcntl.flock(fd, fcntl.LOCK_EX)
        stats["lock_wait"].append(time.perf_counter() - t0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    stats["lock_wait"] = []
    database.Database._writer_lock = writer_lock  # type: ignore[method-assign]

    # Garbage-collector pauses, by generation: a full collection stops every thread.
    import collections
    import gc

    gc_started: list[float] = [0.0]
    full_gcs: list[tuple[float, float, str]] = []
    census: list[str] = [""]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            if info["generation"] == 2:  # what a full collection walks: the oldest generation
                old = gc.get_objects(2)
                kinds = collections.Counter(type(o).__name__ for o in old).most_common(8)
                census[0] = f"{len(old)} objects in gen 2: " + ", ".join(f"{k} {n}" for k, n in kinds)
                del old
            gc_started[0] = time.perf_counter()
        else:
            took = time.perf_counter() - gc_started[0]
            stats.setdefault(f"gc{info['generation']}", []).append(took)
            if info["generation"] == 2:  # when, to tell the phases of a run apart
                full_gcs.append((time.time(), took, census[0]))

    gc.callbacks.append(on_gc)

    async def lag() -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            stats["loop_lag"].append(loop.time() - t - 0.005)

    from herald import bootstrap

    original_start = bootstrap.Container.start_roles

    def start_roles(self: Any, roles: Any, **kwargs: Any) -> None:
        original_start(self, roles, **kwargs)
        self._tasks.append(asyncio.get_running_loop().create_task(lag()))

    bootstrap.Container.start_roles = start_roles  # type: ignore[method-assign]

    def writer() -> None:
        out = Path("latency_probe.txt")
        while True:
            time.sleep(1.0)
            lines = []
            for name, values in list(stats.items()):
                v = sorted(values[-20000:])
                if v:
                    p50, p95, p99 = (
                        round(1000 * v[min(len(v) - 1, int(q * len(v)))], 2) for q in (0.5, 0.95, 0.99)
                    )
                    top = round(1000 * v[-1], 2)
                    lines.append(f"{name}: n={len(values)} p50={p50} p95={p95} p99={p99} max={top} ms")
            lines += [f"gc2 at {at:.3f}: {1000 * took:.1f} ms ({what})" for at, took, what in full_gcs]
            out.write_text("\n".join(lines) + "\n")

    threading.Thread(target=writer, name="bench-latency-probe", daemon=True).start()


@patch("tx_census")
def _tx_census() -> None:
    """Not a fix: counts the transactions herald runs, by operation, into ``tx_census.txt`` in
    its working folder (rewritten every second: uvicorn re-raises SIGTERM after a graceful
    stop, so an ``atexit`` hook would never run)."""
    import threading
    from collections import Counter
    from pathlib import Path

    from herald.adapters.store.database import Database

    counts: Counter[str] = Counter()
    inside: Counter[str] = Counter()  # seconds spent inside the transaction (the op itself)
    original = Database.run

    async def run(self: Any, fn: Any) -> Any:
        name = getattr(fn, "__qualname__", type(fn).__name__).replace(".<locals>.op", "")
        counts[name] += 1

        def timed(c: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(c)
            finally:
                inside[name] += time.perf_counter() - t0

        return await original(self, timed)

    def writer() -> None:
        out = Path("tx_census.txt")
        while True:
            time.sleep(1.0)
            lines = [
                f"{n:8d} {1000 * inside[name]:9.0f} ms in  {name}" for name, n in counts.copy().most_common()
            ]
            out.write_text(f"{sum(counts.values()):8d} total\n" + "\n".join(lines) + "\n")

    Database.run = run  # type: ignore[method-assign]
    threading.Thread(target=writer, name="bench-tx-census", daemon=True).start()


@patch("extra_worker")
def _extra_worker() -> None:
    """Experiment: one more process for sending. ``herald serve`` starts a ``herald worker``
    child on the same configuration (so on SQLite: the same database file, claims serialised
    by SQLite's write lock) and writes the child's CPU seconds and peak RSS to
    ``extra_worker.txt`` every second (the harness measures only the serve process)."""
    import atexit
    import subprocess
    import threading
    from pathlib import Path

    args = sys.argv[sys.argv.index("serve") + 1 :] if "serve" in sys.argv else []
    from bench.procs import _die_with_parent

    child = subprocess.Popen(
        [sys.executable, "-m", "herald", "worker", *args],
        stdout=open("extra_worker.log", "ab"),  # noqa: SIM115 - lives as long as the child
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - before herald starts its threads
    )
    atexit.register(child.terminate)
    ticks = os.sysconf("SC_CLK_TCK")

    def writer() -> None:
        out = Path("extra_worker.txt")
        while child.poll() is None:
            try:
                fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / ticks
                hwm = next(
                    line.split()[1]
                    for line in Path(f"/proc/{child.pid}/status").read_text().splitlines()
                    if line.startswith("VmHWM")
                )
                out.write_text(f"cpu_s={cpu:.2f} peak_rss_kb={hwm}\n")
            except (OSError, StopIteration, IndexError):
                pass
            time.sleep(1.0)

    threading.Thread(target=writer, name="bench-extra-worker", daemon=True).start()


def apply(names: Sequence[str]) -> None:
    for name in names:
        if name not in PATCHES:
            raise SystemExit(f"unknown patch {name!r}; known: {', '.join(sorted(PATCHES))}")
        PATCHES[name]()


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m bench.patched PATCH[,PATCH...] HERALD-ARGS...")
    names = [n for n in sys.argv[1].split(",") if n]
    apply(names)
    sys.argv = ["herald", *sys.argv[2:]]
    from herald.entrypoints.cli import main as herald_main

    herald_main()


if __name__ == "__main__":
    main()
