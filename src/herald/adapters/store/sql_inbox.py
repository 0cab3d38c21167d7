"""The live inbox's durable order (:class:`herald.ports.InboxFeed`) on SQLite and PostgreSQL.

Each in-app item gets, as it is sent, the next number of its user's feed. Streams use these
numbers as SSE event ids and resume with ``seq > Last-Event-ID``, so the order must be the
order in which numbers become visible: a reader that saw 7 must never later find a 6.

- SQLite has one writer at a time: ``max + 1`` inside the write transaction is that order.
- PostgreSQL: a transaction-scoped advisory lock per user (taken in a fixed order when a batch
  holds several users) serialises the writers of one user, so ``max + 1`` commits in order and
  two processes never take the same number. Different users never wait for each other.

Appends are coalesced: the in-app provider of a busy worker numbers the items of many sends in
one transaction (one commit, not one per item).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, text

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import _delivery
from herald.domain.models import DeliveryStatus as S
from herald.ports import InboxEntry

_LOCK_SPACE = 190_019  # the first key of herald's advisory locks on inbox feeds
_UNREAD = (S.SENT.value, S.DELIVERED.value)
_PENDING = (S.QUEUED.value, S.SENDING.value, S.RETRYING.value)


class SqlInboxFeed:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[tuple[str, str, float, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None

    # Numbering ------------------------------------------------------------------------------
    async def append(self, items: Sequence[tuple[str, str]], *, now: float) -> dict[str, int]:
        loop = asyncio.get_running_loop()
        futures = []
        for user_id, delivery_id in items:
            fut: asyncio.Future[int] = loop.create_future()
            self._pending.append((user_id, delivery_id, now, fut))
            futures.append((delivery_id, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="herald-inbox-feed")
        return {delivery_id: await fut for delivery_id, fut in futures}

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                numbers = await self.db.run(functools.partial(self._number, batch=batch))
            except Exception as exc:
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, delivery_id, _, fut in batch:
                if not fut.done():
                    fut.set_result(numbers[delivery_id])

    def _number(self, c: Connection, batch: list[tuple[str, str, float, Any]]) -> dict[str, int]:
        f = t.inbox_feed
        users = sorted({b[0] for b in batch})
        if self.db.dialect == "postgresql":
            for user in users:  # a fixed order: two batches never wait for each other in a cycle
                c.execute(
                    text("SELECT pg_advisory_xact_lock(:space, hashtext(:user))"),
                    {"space": _LOCK_SPACE, "user": user},
                )
        ids = [b[1] for b in batch]
        known = {
            r.delivery_id: int(r.seq)
            for r in c.execute(select(f.c.delivery_id, f.c.seq).where(f.c.delivery_id.in_(ids)))
        }
        heads = {
            r.user_id: int(r.head)
            for r in c.execute(
                select(f.c.user_id, func.max(f.c.seq).label("head"))
                .where(f.c.user_id.in_(users))
                .group_by(f.c.user_id)
            )
        }
        rows = []
        for user, delivery_id, now, _ in batch:
            if delivery_id in known:  # sent again (a redelivery after a crash): same number
                continue
            heads[user] = known[delivery_id] = heads.get(user, 0) + 1
            rows.append({"user_id": user, "seq": heads[user], "delivery_id": delivery_id, "created_at": now})
        if rows:
            c.execute(insert(f), rows)
        return known

    # Reading --------------------------------------------------------------------------------
    async def head(self, user_id: str) -> int:
        f = t.inbox_feed
        return await self.db.run(
            lambda c: int(
                c.execute(
                    select(func.coalesce(func.max(f.c.seq), 0)).where(f.c.user_id == user_id)
                ).scalar_one()
            )
        )

    async def after(self, user_id: str, seq: int, *, limit: int) -> tuple[list[InboxEntry], int]:
        f, d = t.inbox_feed, t.deliveries

        def op(c: Connection) -> tuple[list[InboxEntry], int]:
            numbered = c.execute(
                select(f.c.seq, f.c.delivery_id)
                .where(f.c.user_id == user_id, f.c.seq > seq)
                .order_by(f.c.seq)
                .limit(limit)
            ).all()
            entries: list[InboxEntry] = []
            if numbered:
                rows = c.execute(
                    select(d).where(d.c.id.in_([r.delivery_id for r in numbered]), d.c.user_id == user_id)
                )
                by_id = {x.id: x for x in map(_delivery, rows)}
                entries = [
                    InboxEntry(int(r.seq), by_id[r.delivery_id]) for r in numbered if r.delivery_id in by_id
                ]
            unread = c.execute(
                select(func.count())
                .select_from(d)
                .where(and_(d.c.user_id == user_id, d.c.channel == "in_app", d.c.status.in_(_UNREAD)))
            ).scalar_one()
            # An item numbered as it is sent is committed ``sent`` a moment later: count it now.
            pending = sum(1 for e in entries if e.delivery.status.value in _PENDING)
            return entries, int(unread) + pending

        return await self.db.run(op)
