"""Short-lived read caches for the accept path: API keys, latest template versions, user ids.

Every ``POST /v1/notifications`` used to read its API key, its template and its users, each in
a transaction of its own on the one SQLite thread (three of the four per request). These reads
change rarely, so a hit is kept for a few seconds:

* API keys (positive answers only, ``key_ttl``): a new key works at once; a key revoked in the
  database (``api_keys.revoked_at``) stops working within ``key_ttl`` seconds.
* the latest version of a template (``template_ttl``): versions are immutable, but "latest"
  moves with ``PUT``; the API calls :meth:`forget_template` on put and delete, so the next send
  from the same process sees the change at once, other processes within ``template_ttl``.
* which user ids exist (positive answers only, ``user_ttl``): the API calls :meth:`forget_user`
  on delete; a user deleted through another process within ``user_ttl`` is still accepted and
  then skipped by the router (reason ``user_deleted``), as it would be had the deletion come a
  moment after the accept.

Time is ``time.monotonic``: this is about freshness on this machine, not the domain clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

import structlog

from herald.domain.models import ApiKey, Template
from herald.ports import LookupsStore
from herald.services.api_keys import LAST_USED_RESOLUTION_SECONDS

log = structlog.get_logger("herald.lookups")

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A dict whose entries expire ``ttl`` seconds after they were put; bounded in size."""

    def __init__(self, ttl: float, max_size: int = 10_000) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._items: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        return hit[1]

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        if len(self._items) >= self.max_size:
            self._items.clear()  # rare: a full cache is simply started again
        self._items[key] = (time.monotonic() + self.ttl, value)

    def forget(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


class Lookups:
    """Read-through caches in front of the store, one per process (built in the bootstrap)."""

    def __init__(
        self,
        store: LookupsStore,
        *,
        key_ttl: float = 30.0,
        template_ttl: float = 10.0,
        user_ttl: float = 30.0,
    ) -> None:
        self.store = store
        self._keys: TtlCache[str, ApiKey] = TtlCache(key_ttl, max_size=1_000)
        self._templates: TtlCache[str, Template] = TtlCache(template_ttl, max_size=1_000)
        self._users: TtlCache[str, bool] = TtlCache(user_ttl, max_size=100_000)
        self._template_reads: dict[str, asyncio.Future[Template | None]] = {}
        self._generations: dict[str, int] = {}  # bumped by forget_template
        self._key_used: dict[str, float] = {}  # key id -> when this process last recorded a use
        self._touches: set[asyncio.Task[None]] = set()

    async def api_key(self, key_hash: str) -> ApiKey | None:
        key = self._keys.get(key_hash)
        if key is None:
            key = await self.store.get_api_key(key_hash)
            if key is not None:
                self._keys.put(key_hash, key)
        if key is not None:
            self._note_use(key.id)
        return key

    def _note_use(self, key_id: str) -> None:
        """Record that a key was used (``herald keys list``), at most once a minute per key
        and process, in the background: authentication itself stays a cache read."""
        now = time.time()
        if now - self._key_used.get(key_id, -math.inf) < LAST_USED_RESOLUTION_SECONDS:
            return
        self._key_used[key_id] = now
        task = asyncio.get_running_loop().create_task(self.store.touch_api_key(key_id, now))
        self._touches.add(task)
        task.add_done_callback(self._touched)

    def _touched(self, task: asyncio.Task[None]) -> None:
        self._touches.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Losing a "last used" mark is harmless; the next use writes it again.
            log.warning("api_key.last_used_not_recorded", error=type(task.exception()).__name__)

    async def template(self, name: str) -> Template | None:
        """The latest version of ``name`` (None when it does not exist or was deleted)."""
        template = self._templates.get(name)
        if template is not None:
            return template
        # One read for every request that misses at once (at expiry, under load, hundreds
        # of requests would otherwise each queue the same read on the database thread).
        pending = self._template_reads.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._read_template(name))
            self._template_reads[name] = pending

            def done(finished: asyncio.Future[Template | None]) -> None:
                if self._template_reads.get(name) is finished:
                    del self._template_reads[name]

            pending.add_done_callback(done)
        return await asyncio.shield(pending)

    async def _read_template(self, name: str) -> Template | None:
        generation = self._generations.get(name, 0)
        template = await self.store.get_template(name)
        # Not cached when a put or delete came meanwhile: what was read may be the old one.
        if template is not None and self._generations.get(name, 0) == generation:
            self._templates.put(name, template)
        return template

    def forget_template(self, name: str) -> None:
        self._templates.forget(name)
        self._template_reads.pop(name, None)  # a read under way may predate the change
        self._generations[name] = self._generations.get(name, 0) + 1

    async def existing_users(self, user_ids: Sequence[str]) -> set[str]:
        """The ids among ``user_ids`` that name stored users."""
        found = {u for u in user_ids if self._users.get(u)}
        unknown = [u for u in user_ids if u not in found]
        if unknown:
            stored = await self.store.get_users(unknown)
            for u in stored:
                self._users.put(u, True)
            found.update(stored)
        return found

    def forget_user(self, user_id: str) -> None:
        self._users.forget(user_id)

    def forget_users(self, user_ids: Iterable[str]) -> None:
        for u in user_ids:
            self._users.forget(u)
