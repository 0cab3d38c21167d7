"""Live inbox streams: in-process fan-out of new in-app items to connected clients."""

from __future__ import annotations

import asyncio
from typing import Any


class InboxHub:
    def __init__(self, max_queue: int = 100) -> None:
        self._subs: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self.max_queue = max_queue

    def subscribe(self, user_id: str) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.max_queue)
        self._subs.setdefault(user_id, set()).add(q)
        return q

    def unsubscribe(self, user_id: str, q: asyncio.Queue[dict[str, Any]]) -> None:
        subs = self._subs.get(user_id)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self._subs[user_id]

    def publish(self, user_id: str, item: dict[str, Any]) -> None:
        for q in self._subs.get(user_id, ()):
            if not q.full():  # a slow client misses live items, never the inbox itself
                q.put_nowait(item)
