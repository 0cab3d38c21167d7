"""Leader election through a named lease in the store: exactly one active scheduler.

Every scheduler process runs a :class:`LeaderLease`. The holder renews the lease every ``ttl/3``;
the others try to take it every ``ttl/5`` and succeed once it has expired, so when the holder
dies (kill -9, lost machine) another one takes over within about ``ttl`` of the holder's last
renewal. A holder stops acting as leader as soon as its lease may have run out from the others'
point of view (it could not renew in time: the store is unreachable), measured on its own
monotonic clock from the moment it *sent* its last successful renewal, so two leaders never
overlap by more than the clock skew between hosts. A graceful stop releases the lease and the
next contender takes over at once.

Works on SQLite and PostgreSQL, whatever the queue (the lease is one upsert, see
``Store.acquire_or_renew``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

import structlog

from herald.domain.errors import HeraldError
from herald.domain.models import new_id
from herald.ports import Clock, LeaseStore

log = structlog.get_logger("herald.leader")


class LeaderLease:
    def __init__(
        self,
        store: LeaseStore,
        clock: Clock,
        *,
        name: str = "scheduler",
        ttl: float = 5.0,
        owner: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``monotonic`` is this process's own clock for how long its lease is still valid
        (never the store's or another host's); tests pass a fake one."""
        self.store = store
        self.clock = clock
        self.name = name
        self.ttl = ttl
        self._monotonic = monotonic
        self.owner = owner or f"{name}-{os.getpid()}-{new_id('l')[-8:]}"
        self._valid_until = 0.0  # monotonic
        self._changed = asyncio.Event()
        self._waiting_since = self._monotonic()

    @property
    def is_leader(self) -> bool:
        return self._monotonic() < self._valid_until

    async def wait_leader(self, stopping: asyncio.Event, timeout: float) -> bool:
        """Return True once this process leads (at once if it does), False on timeout or stop."""
        deadline = self._monotonic() + timeout
        while not self.is_leader and not stopping.is_set():
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, self.ttl / 5))
        return self.is_leader

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the lease; True while this process leads."""
        was_leader = self.is_leader
        sent = self._monotonic()
        now = self.clock.now()
        previous = None if was_leader else await self.store.get_lease(self.name)
        held = await self.store.acquire_or_renew(self.name, self.owner, ttl=self.ttl, now=now)
        if held:
            # Valid from when the renewal was sent, not when its answer came back.
            self._valid_until = sent + self.ttl
            if not was_leader:
                fields: dict[str, object] = {
                    "owner": self.owner,
                    "waited_s": round(self._monotonic() - self._waiting_since, 3),
                }
                if previous is not None and previous.owner != self.owner:
                    # How long after the previous holder's last renewal, and after its expiry.
                    fields["previous_owner"] = previous.owner
                    fields["takeover_s"] = round(now - (previous.until - self.ttl), 3)
                    fields["vacant_s"] = round(max(0.0, now - previous.until), 3)
                log.info("scheduler.leader_acquired", **fields)
                self._changed.set()
        elif was_leader or self._valid_until:
            self._lost()
        return held

    def _lost(self) -> None:
        if self._valid_until:
            log.warning("scheduler.leader_lost", owner=self.owner)
        self._valid_until = 0.0
        self._waiting_since = self._monotonic()
        self._changed.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Contend, then renew, until ``stopping``; release the lease on the way out."""
        while not stopping.is_set():
            try:
                await self.try_acquire()
            except HeraldError as exc:
                log.warning("scheduler.lease_error", error=exc.detail)
            if self._valid_until and not self.is_leader:
                self._lost()  # could not renew in time
            pause = self.ttl / 3 if self.is_leader else self.ttl / 5
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)
        await self.release()

    async def release(self) -> None:
        leading = self.is_leader
        self._valid_until = 0.0
        self._changed.set()
        if leading:
            with contextlib.suppress(HeraldError):
                await self.store.release_lease(self.name, self.owner)
                log.info("scheduler.leader_released", owner=self.owner)
