"""The live inbox's durable order (:class:`herald.ports.InboxFeed`) on SQLite and PostgreSQL.

Each in-app item gets, in the transaction that records it ``sent`` (``record_results``,
:func:`number_items`), the next number of its user's feed. Streams use these numbers as SSE
event ids and resume with ``seq > Last-Event-ID``, so the order must be the order in which
numbers become visible: a reader that saw 7 must never later find a 6.

- SQLite has one writer at a time: ``max + 1`` inside the write transaction is that order.
- PostgreSQL: a transaction-scoped advisory lock per user (taken in one fixed order when a
  batch holds several users) serialises the writers of one user, so ``max + 1`` commits in
  order and two processes never take the same number. Different users never wait for each
  other (unless their keys collide, which only serialises them).

Numbered with the result, an item is in the feed exactly when it is ``sent``: no transaction of
its own (a bulk in-app send paid one more commit per batch for it), and nothing numbered that
a crash could leave unsent.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from sqlalchemy import Connection, and_, func, insert, select, text

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import _delivery
from herald.domain.models import Channel
from herald.domain.models import DeliveryStatus as S
from herald.ports import InboxEntry

_LOCK_SPACE = 190_019  # the first key of herald's advisory locks on inbox feeds
# One statement for the batch's users, their lock keys in ascending order: two transactions
# never wait for each other in a cycle (ordered by key, not by name: names whose keys collide
# would otherwise be locked in an order that two batches could see reversed).
_LOCK_USERS = text(
    "SELECT count(pg_advisory_xact_lock(:space, k)) FROM "
    "(SELECT DISTINCT hashtext(u) AS k FROM unnest(CAST(:users AS text[])) AS u ORDER BY k) AS keys"
)
_CHUNK = 500
_UNREAD = (S.SENT.value, S.DELIVERED.value)
_PENDING = (S.QUEUED.value, S.SENDING.value, S.RETRYING.value)
IN_APP = Channel.IN_APP.value


def number_items(c: Connection, items: Sequence[tuple[str, str]], now: float) -> dict[str, int]:
    """Number each ``(user_id, delivery_id)`` in its user's feed in ``c``'s transaction, in the
    order given; an item numbered before keeps its number. Returns {delivery id: number}."""
    f = t.inbox_feed
    users = sorted({user for user, _ in items})
    if c.dialect.name == "postgresql":
        c.execute(_LOCK_USERS, {"space": _LOCK_SPACE, "users": users})
    ids = [delivery_id for _, delivery_id in items]
    known: dict[str, int] = {}
    heads: dict[str, int] = {}
    for i in range(0, len(ids), _CHUNK):
        q = select(f.c.delivery_id, f.c.seq).where(f.c.delivery_id.in_(ids[i : i + _CHUNK]))
        known.update((r.delivery_id, int(r.seq)) for r in c.execute(q))
    for i in range(0, len(users), _CHUNK):
        q = (
            select(f.c.user_id, func.max(f.c.seq).label("head"))
            .where(f.c.user_id.in_(users[i : i + _CHUNK]))
            .group_by(f.c.user_id)
        )
        heads.update((r.user_id, int(r.head)) for r in c.execute(q))
    rows = []
    for user, delivery_id in items:
        if delivery_id in known:  # sent again (a redelivery after a crash): same number
            continue
        heads[user] = known[delivery_id] = heads.get(user, 0) + 1
        rows.append({"user_id": user, "seq": heads[user], "delivery_id": delivery_id, "created_at": now})
    if rows:
        c.execute(insert(f), rows)
    return known


class SqlInboxFeed:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Numbering ------------------------------------------------------------------------------
    async def append(self, items: Sequence[tuple[str, str]], *, now: float) -> dict[str, int]:
        # The store numbers in-app items itself as it records them sent (record_results).
        return await self.db.run(functools.partial(number_items, items=items, now=now))

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
                .where(and_(d.c.user_id == user_id, d.c.channel == IN_APP, d.c.status.in_(_UNREAD)))
            ).scalar_one()
            # Items are numbered as they are committed ``sent``; a herald from before that numbered
            # them a moment before (during a rolling upgrade): count those as unread too.
            pending = sum(1 for e in entries if e.delivery.status.value in _PENDING)
            return entries, int(unread) + pending

        return await self.db.run(op)
