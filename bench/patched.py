"""Run herald with candidate performance fixes patched in at run time, to measure them.

This is an experiment tool, not part of herald: ``src/`` is left untouched, and the figures in
BENCHMARKS.md are for the unpatched code unless a line says otherwise. Each patch is the
smallest change that tests one hypothesis from the profile; the real fix belongs in ``src/``.

    python -m bench.patched PATCH[,PATCH...] serve --config herald.toml
    python -m bench drain --herald-patches record_results,prefetch_users

Patches:

* ``async_container``: the FastAPI dependency ``deps.container`` is a plain ``def``, which
  FastAPI runs in its thread pool on every request; an ``async def`` runs inline.
* ``record_results``: ``SqlStore.record_results`` builds and compiles one SQLAlchemy UPDATE per
  result; here one pre-written statement runs through ``executemany`` after one SELECT that
  finds the results whose lease is still held.
* ``claim``: ``SqlQueue.claim`` builds up to eight SELECTs and an UPDATE per claim with
  SQLAlchemy Core; here the same statements are pre-written SQL strings.
* ``prefetch_users``: a batch looks up its stored users one item at a time (one database
  round trip per distinct user); here they are fetched in one query before the items.
* ``api_key_cache``: every request reads its API key row; here a hit is cached for 5 s.
* ``tx_census`` (not a fix): counts database transactions by operation, printed to herald's
  working folder's ``tx_census.txt`` (run with ``--keep`` to read it).
"""

from __future__ import annotations

import contextvars
import functools
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


@patch("async_container")
def _async_container() -> None:
    from fastapi import FastAPI, Request

    from herald.entrypoints import cli
    from herald.entrypoints.api import deps

    async def container(request: Request) -> Any:
        return request.app.state.container

    def walk(dependant: Any) -> None:
        for sub in dependant.dependencies:
            if sub.call is deps.container:
                object.__setattr__(sub, "call", container)
                for name, attr in type(sub).__dict__.items():
                    if isinstance(attr, functools.cached_property):
                        sub.__dict__.pop(name, None)
            walk(sub)

    original = cli.create_app

    def create_app(*args: Any, **kwargs: Any) -> FastAPI:
        app = original(*args, **kwargs)
        for route in app.routes:
            dependant = getattr(route, "dependant", None)
            if dependant is not None:
                walk(dependant)
        return app

    cli.create_app = create_app


_UPDATE = (
    "UPDATE deliveries SET status = ?, reason = ?, provider = ?, retry_count = ?, lease_owner = NULL, "
    "lease_until = NULL, updated_at = ?, budget_used = budget_used + ?, sent_at = COALESCE(?, sent_at), "
    "provider_message_id = CASE WHEN ? THEN ? ELSE provider_message_id END, "
    "failed_at = COALESCE(?, failed_at), due_at = COALESCE(?, due_at) "
    "WHERE id = ? AND status = 'sending' AND lease_owner = ?"
)


@patch("record_results")
def _record_results() -> None:
    from sqlalchemy import Connection, insert

    from herald.adapters.store import sql
    from herald.domain.models import DeliveryResult

    S = sql.S
    a = sql.t.attempts

    async def record_results(self: Any, results: Sequence[DeliveryResult], *, now: float) -> list[str]:
        def op(c: Connection) -> list[str]:
            ids = [r.delivery_id for r in results]
            held: set[tuple[str, str]] = set()
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = c.exec_driver_sql(
                    f"SELECT id, lease_owner FROM deliveries WHERE status = 'sending' AND id IN ({marks})",
                    tuple(chunk),
                )
                held.update((row[0], row[1]) for row in rows)
            rejected: list[str] = []
            params: list[tuple[Any, ...]] = []
            attempts: list[dict[str, Any]] = []
            dead: list[Any] = []
            for r in results:
                sql.check_transition(S.SENDING, r.new_status)
                if (r.delivery_id, r.lease_owner) not in held:
                    rejected.append(r.delivery_id)
                    continue
                sent = r.new_status == S.SENT
                params.append(
                    (
                        r.new_status.value,
                        r.reason,
                        r.attempt.provider,
                        r.attempt.n,
                        now,
                        1 if r.counts_against_budget else 0,
                        r.attempt.at if sent else None,
                        1 if sent else 0,
                        r.provider_message_id,
                        now if r.new_status in (S.FAILED, S.DEAD) else None,
                        r.due_at,
                        r.delivery_id,
                        r.lease_owner,
                    )
                )
                at = r.attempt
                attempts.append(
                    {
                        "delivery_id": r.delivery_id,
                        "n": at.n,
                        "at": at.at,
                        "provider": at.provider,
                        "outcome": at.outcome.value,
                        "code": at.code[:64] if at.code else at.code,
                        "detail": at.detail,
                        "latency_ms": at.latency_ms,
                        "ambiguous": at.ambiguous,
                    }
                )
                if r.dead_address:
                    dead.append(r)
            if params:
                c.exec_driver_sql(_UPDATE, params)
            for r in dead:
                channel = c.exec_driver_sql(
                    "SELECT channel FROM deliveries WHERE id = ?", (r.delivery_id,)
                ).scalar_one()
                self._suppress(c, channel, r.dead_address, r.reason or "invalid_address", now)
            if attempts:
                c.execute(insert(a), attempts)
            return rejected

        result: list[str] = await self.db.run(op)
        return result

    sql.SqlStore.record_results = record_results  # type: ignore[method-assign]


_CLAIM_SELECT = (
    "SELECT id FROM deliveries WHERE channel = ? AND status = ? AND priority = ? AND due_at <= ? "
    "ORDER BY due_at LIMIT ?"
)


@patch("claim")
def _claim() -> None:
    from sqlalchemy import Connection

    from herald.adapters.queue import sql as queue_sql
    from herald.domain.models import Delivery

    claimable = queue_sql._CLAIMABLE

    async def claim(
        self: Any, channel: str, *, owner: str, limit: int, max_rank: int, lease: float, now: float
    ) -> list[Delivery]:
        def op(c: Connection) -> list[Delivery]:
            ids: list[str] = []
            for rank in range(max_rank + 1):
                for status in claimable:
                    want = limit - len(ids)
                    if want <= 0:
                        break
                    ids.extend(
                        row[0] for row in c.exec_driver_sql(_CLAIM_SELECT, (channel, status, rank, now, want))
                    )
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = c.exec_driver_sql(
                "UPDATE deliveries SET status = 'sending', lease_owner = ?, lease_until = ?, sending_at = ?, "
                f"updated_at = ? WHERE id IN ({marks}) AND status IN ('queued', 'retrying') RETURNING *",
                (owner, now + lease, now, now, *ids),
            ).all()
            out = [queue_sql._delivery(r) for r in rows]
            out.sort(key=lambda x: (x.priority.rank, x.due_at))
            return out

        if self.db.dialect != "sqlite":
            raise RuntimeError("the claim patch is written for SQLite")
        result: list[Delivery] = await self.db.run(op)
        return result

    queue_sql.SqlQueue.claim = claim  # type: ignore[method-assign]


_PREFETCHED: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "bench_prefetched_users", default=None
)


@patch("prefetch_users")
def _prefetch_users() -> None:
    from herald.adapters.store import sql
    from herald.services import accept

    original_idempotent = accept.AcceptService.idempotent
    original_get_users = sql.SqlStore.get_users

    async def idempotent(self: Any, scope: str, key: str | None, payload: Any, build: Any) -> Any:
        items = payload.get("notifications") if isinstance(payload, dict) else None
        token = None
        if isinstance(items, list):
            wanted: list[str] = []
            for item in items:
                to = item.get("to") if isinstance(item, dict) else None
                for one in to if isinstance(to, list) else [to]:
                    if isinstance(one, str):
                        wanted.append(one)
            if wanted:
                token = _PREFETCHED.set(await original_get_users(self.store, wanted))
        try:
            return await original_idempotent(self, scope, key, payload, build)
        finally:
            if token is not None:
                _PREFETCHED.reset(token)

    async def get_users(self: Any, user_ids: Sequence[str]) -> dict[str, Any]:
        cache = _PREFETCHED.get()
        if cache is not None:
            return {u: cache[u] for u in user_ids if u in cache}
        result: dict[str, Any] = await original_get_users(self, user_ids)
        return result

    accept.AcceptService.idempotent = idempotent  # type: ignore[method-assign]
    sql.SqlStore.get_users = get_users  # type: ignore[method-assign]


@patch("api_key_cache")
def _api_key_cache() -> None:
    from herald.adapters.store import sql

    original = sql.SqlStore.get_api_key
    cache: dict[str, tuple[float, Any]] = {}

    async def get_api_key(self: Any, key_hash: str) -> Any:
        hit = cache.get(key_hash)
        if hit is not None and time.monotonic() - hit[0] < 5.0:
            return hit[1]
        key = await original(self, key_hash)
        if key is not None:
            cache[key_hash] = (time.monotonic(), key)
        return key

    sql.SqlStore.get_api_key = get_api_key  # type: ignore[method-assign]


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
    original = Database.run

    async def run(self: Any, fn: Any) -> Any:
        name = getattr(fn, "__qualname__", type(fn).__name__).replace(".<locals>.op", "")
        counts[name] += 1
        return await original(self, fn)

    def writer() -> None:
        out = Path("tx_census.txt")
        while True:
            time.sleep(1.0)
            lines = [f"{n:8d} {name}" for name, n in counts.copy().most_common()]
            out.write_text(f"{sum(counts.values()):8d} total\n" + "\n".join(lines) + "\n")

    Database.run = run  # type: ignore[method-assign]
    threading.Thread(target=writer, name="bench-tx-census", daemon=True).start()


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
