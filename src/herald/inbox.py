"""Live inbox streams: the durable feed, the wake-ups, and the streams this process holds.

An in-app item is *numbered* in its user's feed in the transaction that records it ``sent``
(the store's ``record_results``; :class:`herald.ports.InboxFeed` reads the feed), then, once
that is committed, every process is *told* (:class:`herald.ports.LiveSignals`: in-process, or
PostgreSQL ``NOTIFY`` across processes). A stream never carries what the signal said: woken,
it reads the feed after the last number it sent. So a stream that reconnects, to this process
or another, resumes from its ``Last-Event-ID`` with nothing missed, and a lost signal costs at
most one heartbeat of latency.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from herald.domain.errors import HeraldError, ServiceUnavailable
from herald.ports import InboxFeed, LiveSignals

_FRESH_MAX = 100
_STAGED_MAX = 10_000  # items sent to users with a stream here, waiting for their number


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TooManyStreams(HeraldError):
    status = 429
    title = "Too many streams"


@dataclass(eq=False, slots=True)
class StreamSub:
    """One open stream: woken when its user has news, or when the process shuts down."""

    user_id: str
    event: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False
    # Items this process numbered since the stream last looked, as (number, item): a stream
    # whose next number is the first of them sends them without reading the database (one
    # read per stream per item was most of the work of a fan-out to many open streams).
    fresh: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


class InboxHub:
    def __init__(self, feed: InboxFeed, signals: LiveSignals, *, per_user: int = 8) -> None:
        self.feed = feed
        self.signals = signals
        self.per_user = per_user
        self._subs: dict[str, set[StreamSub]] = {}
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # {delivery id: (user id, the item as a stream shows it)}: sent by this process to a
        # user with a stream here, not yet numbered (its result is not committed yet).
        self._staged: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        signals.on_wake(self.wake)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.signals.start()

    async def close(self) -> None:
        self.close_streams()
        await self.signals.close()

    # The sending side (the in_app provider, then the store once the item is sent) -------------
    async def publish(self, user_id: str, item: dict[str, Any]) -> None:
        """An item is being sent. It is numbered when its ``sent`` result commits
        (:meth:`numbered`); until then, kept if the user has a stream here, so that the stream
        can show it without reading the database."""
        if user_id not in self._subs:
            return  # nobody to show it to here: streams opened later read the feed
        view = {**item, "read": False, "created_at": _iso(time.time()), "read_at": None}
        self._staged[str(item["id"])] = (user_id, view)
        while len(self._staged) > _STAGED_MAX:  # results that never came (a lost lease)
            self._staged.popitem(last=False)

    def numbered(self, items: Sequence[tuple[str, str, int]]) -> None:
        """In-app items ``(user_id, delivery_id, number)`` were committed ``sent`` and numbered
        in their users' feeds: streams here get the ones staged, and every process is told."""
        users: dict[str, None] = {}
        for user_id, delivery_id, seq in items:
            users[user_id] = None
            staged = self._staged.pop(delivery_id, None)
            if staged is None:
                continue
            for sub in self._subs.get(user_id, ()):
                if len(sub.fresh) < _FRESH_MAX:
                    sub.fresh.append((seq, staged[1]))
        for user_id in users:
            self.signals.notify(user_id)

    def changed(self, user_id: str) -> None:
        """Something else changed for the user (items read): streams send the unread count."""
        for sub in self._subs.get(user_id, ()):
            sub.fresh.clear()  # the streams read the database: the count there is the truth
        self.signals.notify(user_id)

    # The streams -------------------------------------------------------------------------------
    @property
    def open_streams(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def subscribe(self, user_id: str) -> StreamSub:
        if self._closing:
            raise ServiceUnavailable("this herald is shutting down: reconnect to another one")
        subs = self._subs.setdefault(user_id, set())
        if len(subs) >= self.per_user:
            raise TooManyStreams(f"at most {self.per_user} open streams per user")
        sub = StreamSub(user_id)
        subs.add(sub)
        return sub

    def unsubscribe(self, sub: StreamSub) -> None:
        subs = self._subs.get(sub.user_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.user_id]

    def wake(self, user_id: str | None) -> None:
        if user_id is None:
            for subs in self._subs.values():
                for sub in subs:
                    sub.event.set()
            return
        for sub in self._subs.get(user_id, ()):
            sub.event.set()

    def close_streams(self) -> None:
        """End every stream (shutdown): clients reconnect, to another process, and resume."""
        self._closing = True
        for subs in self._subs.values():
            for sub in subs:
                sub.closing = True
                sub.event.set()

    def close_streams_threadsafe(self) -> None:
        """From a signal handler or another thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._closing = True
            return
        loop.call_soon_threadsafe(self.close_streams)
