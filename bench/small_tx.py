"""Small SQLite transactions as accept @ 500 runs them, in process: how long each takes.

At 500 single sends a second, ``herald serve`` commits the accepts a few at a time and routes
them in rounds of a few (express routing): one accept commit, one recipients' read and one
routed write for every ~3 notifications. This times those three store calls, thread hop and
transaction included, on a SQLite file, and then what an empty transaction costs and of what:

    python -m bench.small_tx [--rounds 3000] [--per-round 3]

Run it with an older ``src`` first on ``PYTHONPATH`` to compare (the numbers depend on the
machine; compare runs made back to back).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from tests.contract.conftest import NOW, make_delivery, make_notification

from herald.adapters.store.database import Database
from herald.adapters.store.sql import SqlStore
from herald.domain.models import NotificationStatus, User
from herald.ports import RoutedBatch


async def measure(rounds: int, per_round: int, folder: Path) -> dict[str, float]:
    db = Database(f"sqlite:///{folder / 'herald.db'}")
    db.upgrade()
    store = SqlStore(db)
    users = 100
    for i in range(users):
        await store.put_user(User(id=f"u{i}", email=f"u{i}@example.com"))
    spent = {"accept_commit_ms": 0.0, "recipients_read_ms": 0.0, "routed_write_ms": 0.0}
    for r in range(rounds):
        notes = [make_notification(user_ids=(f"u{(r * per_round + k) % users}",)) for k in range(per_round)]
        for n in notes:  # committed already leased to the router, as express routing does
            n.status = NotificationStatus.ROUTING
            n.routing_owner, n.routing_until = "router-1", NOW + 60
        t0 = time.perf_counter()
        await store.create_notifications(notes)
        t1 = time.perf_counter()
        await store.recipient_context([n.recipients[0].user_id for n in notes], with_devices=False)
        t2 = time.perf_counter()
        batches = [
            RoutedBatch(
                notification_id=n.id,
                deliveries=[make_delivery(n.id, user_id=n.recipients[0].user_id)],
                recipients_done=1,
                finished=True,
            )
            for n in notes
        ]
        oks = await store.save_routed_many(batches, owner="router-1", now=NOW)
        t3 = time.perf_counter()
        if not all(oks):
            raise RuntimeError("a routing lease was lost")
        spent["accept_commit_ms"] += t1 - t0
        spent["recipients_read_ms"] += t2 - t1
        spent["routed_write_ms"] += t3 - t2
    await db.close()
    return {k: round(1000 * v / rounds, 3) for k, v in spent.items()}


async def fixed_costs(folder: Path, n: int = 3000) -> dict[str, float]:
    """What a transaction costs besides its statements, in µs of wall time: an empty one
    through ``Database.run``, the hop to the database thread alone, SQLAlchemy's transaction
    on the calling thread, and SQLite's own ``BEGIN IMMEDIATE``/``COMMIT``."""
    db = Database(f"sqlite:///{folder / 'fixed.db'}")
    db.upgrade()
    executor = db._executor  # the SQLite thread (SerialExecutor)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    for _ in range(n):
        await db.run(lambda c: None)
    out["empty_transaction_us"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        await asyncio.wrap_future(executor.submit(lambda: None))
    out["thread_hop_us"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):  # on this thread (the connection allows it): no hop
        db._tx(lambda c: None)
    out["sqlalchemy_transaction_us"] = time.perf_counter() - t0
    conn = sqlite3.connect(folder / "fixed.db", isolation_level=None)
    t0 = time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")
    out["sqlite_begin_commit_us"] = time.perf_counter() - t0
    conn.close()
    await db.close()
    return {k: round(1e6 * v / n, 1) for k, v in out.items()}


def _positive(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, not {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=_positive, default=3000)
    parser.add_argument("--per-round", type=_positive, default=3, help="notifications per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="herald-small-tx-") as folder:
        result = asyncio.run(measure(args.rounds, args.per_round, Path(folder)))
        fixed = asyncio.run(fixed_costs(Path(folder)))
    print(json.dumps({"rounds": args.rounds, "per_round": args.per_round, **result, **fixed}))


if __name__ == "__main__":
    main()
