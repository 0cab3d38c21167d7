"""Idempotency keys (mixed into SqlStore).

A key is written once, *in the transaction that commits what the request made* (its
notifications, its event record), already ``done`` with the response. No row ever says
"pending": a process killed in the middle of an accept leaves nothing behind, so the retry of
that request is simply accepted, and the retry of one that committed gets the original answer.
(Before, a ``pending`` row written at the start of the accept outlived a kill -9 and answered
409 to every retry for the key's whole lifetime, 24 h, and a broker consumer retrying such a
message in place was stuck on it.)

Two requests with one key racing each other (two processes, or a client retrying before the
first answer): both may build, the first commit wins, the second's insert finds the row and its
transaction is rolled back, so nothing of it is stored; the service then answers it with the
winner's response (or 422 if the bodies differ). On PostgreSQL the second insert waits for
the first transaction on the primary key and then sees its row.

Rows left ``pending`` by an older herald are treated as absent and replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, delete, or_, select

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.domain.errors import IdempotencyKeyTaken
from herald.ports import IdempotencyClaim, IdempotencyRecord

DONE = "done"


def _record(row: Any) -> IdempotencyRecord:
    return IdempotencyRecord(
        request_hash=row.request_hash,
        state=row.state,
        status_code=row.status_code,
        response=orjson.loads(row.response) if row.response else None,
    )


def claim_keys(c: Connection, claims: Sequence[IdempotencyClaim], insert: Any) -> None:
    """Write each claim's key as done, in the caller's transaction; raise
    :class:`IdempotencyKeyTaken` (the caller's transaction then rolls back) when a live key
    is already there. ``insert``: the dialect's ``insert`` (for ON CONFLICT DO NOTHING)."""
    tbl = t.idempotency_keys
    for claim in claims:
        c.execute(
            delete(tbl).where(
                tbl.c.scope == claim.scope,
                tbl.c.key == claim.key,
                or_(tbl.c.expires_at < claim.created_at, tbl.c.state != DONE),
            )
        )
        # RETURNING, not rowcount: SQLAlchemy reports -1 as the rowcount of an INSERT on
        # psycopg, which reads as "inserted".
        inserted = c.execute(
            insert(tbl)
            .values(
                scope=claim.scope,
                key=claim.key,
                request_hash=claim.request_hash,
                state=DONE,
                status_code=claim.status_code,
                response=orjson.dumps(claim.response).decode(),
                created_at=claim.created_at,
                expires_at=claim.expires_at,
            )
            .on_conflict_do_nothing()
            .returning(tbl.c.key)
        ).first()
        if inserted is None:
            row = c.execute(select(tbl).where(tbl.c.scope == claim.scope, tbl.c.key == claim.key)).first()
            if row is None:  # gone between the insert and the read: rare; the caller retries
                raise IdempotencyKeyTaken("the idempotency key changed hands; retry", request_hash="")
            rec = _record(row)
            raise IdempotencyKeyTaken(
                "another request with this idempotency key was committed first",
                request_hash=rec.request_hash,
                status_code=rec.status_code,
                response=rec.response,
            )


class SqlIdempotencyMixin:
    db: Database

    async def get_idempotent(self, scope: str, key: str, *, now: float) -> IdempotencyRecord | None:
        tbl = t.idempotency_keys
        q = select(tbl).where(
            tbl.c.scope == scope, tbl.c.key == key, tbl.c.state == DONE, tbl.c.expires_at >= now
        )

        def op(c: Connection) -> IdempotencyRecord | None:
            row = c.execute(q).first()
            return None if row is None else _record(row)

        return await self.db.run(op)
