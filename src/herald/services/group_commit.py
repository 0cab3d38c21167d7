"""Group commit of accepted notifications: concurrent accepts share one transaction.

At hundreds of single ``POST /v1/notifications`` per second, a transaction per request is
mostly fixed cost (the hop to the database thread, ``BEGIN IMMEDIATE``, ``COMMIT``), paid on
SQLite's one writer. :class:`NotificationWriter` collects what concurrent requests want to commit
while the previous commit runs and writes it in one ``Store.create_notifications`` call.

What each caller keeps:

* :meth:`NotificationWriter.commit` returns only once the caller's own rows are committed
  (the ``202`` still means durable);
* a batch that fails is written again one submission at a time, so one request's error (a
  constraint, a value the driver refuses, an idempotency key another request committed
  first) reaches that request alone;
* nothing waits for company: a lone request is written at once, and requests arriving during
  a commit go into the next one.

No task lives between bursts: the flushing task ends when nothing is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from herald.domain.errors import ServiceUnavailable
from herald.domain.models import EventRecord, Notification
from herald.ports import AcceptStore, IdempotencyClaim

MAX_ROWS = 2_000  # notifications per shared transaction (a batch request brings up to 1,000)


@dataclass(slots=True)
class _Submission:
    notifications: Sequence[Notification]
    idempotency: Sequence[IdempotencyClaim]
    events: Sequence[EventRecord]
    done: asyncio.Future[None]


class NotificationWriter:
    def __init__(self, store: AcceptStore, *, max_rows: int = MAX_ROWS) -> None:
        self.store = store
        self.max_rows = max_rows
        self._pending: list[_Submission] = []
        self._task: asyncio.Task[None] | None = None

    async def commit(
        self,
        notifications: Sequence[Notification],
        *,
        idempotency: Sequence[IdempotencyClaim] = (),
        events: Sequence[EventRecord] = (),
    ) -> None:
        """Commit like ``Store.create_notifications``, possibly in one transaction with others."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Submission(notifications, idempotency, events, done))
        sub = self._pending[-1]
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="herald-accept-commit")
        try:
            await done
        except asyncio.CancelledError:
            # Not taken into a transaction yet: it is never written (as a cancelled database
            # call before). Already taken: it commits, and the caller's clean-up runs after it.
            with contextlib.suppress(ValueError):
                self._pending.remove(sub)
            raise

    def _take(self) -> list[_Submission]:
        batch: list[_Submission] = []
        rows = 0
        while self._pending and (not batch or rows + len(self._pending[0].notifications) <= self.max_rows):
            sub = self._pending.pop(0)
            batch.append(sub)
            rows += len(sub.notifications)
        return batch

    async def _flush(self) -> None:
        while self._pending:
            batch = self._take()
            if len(batch) == 1:
                await self._one(batch[0])
                continue
            try:
                await self.store.create_notifications(
                    [n for s in batch for n in s.notifications],
                    idempotency=[i for s in batch for i in s.idempotency],
                    events=[e for s in batch for e in s.events],
                )
            except ServiceUnavailable as exc:  # the database is away: the same answer for all
                for sub in batch:
                    if not sub.done.done():
                        sub.done.set_exception(exc)
                continue
            except Exception:
                # One submission may have caused it: each is written alone and gets its own answer.
                for sub in batch:
                    await self._one(sub)
                continue
            for sub in batch:
                if not sub.done.done():
                    sub.done.set_result(None)

    async def _one(self, sub: _Submission) -> None:
        try:
            await self.store.create_notifications(
                sub.notifications, idempotency=sub.idempotency, events=sub.events
            )
        except Exception as exc:  # handed to the caller, who raises it
            if not sub.done.done():
                sub.done.set_exception(exc)
            return
        if not sub.done.done():
            sub.done.set_result(None)

    async def close(self) -> None:
        """Wait for commits under way (at shutdown)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
