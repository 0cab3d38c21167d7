"""The live in-app inbox: publishing items to open streams, their durable numbered feed, and the
cross-process wake-ups. See :mod:`herald.inbox` for how the three fit together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from herald.domain.models import Delivery


class InboxPublisher(Protocol):
    """Fan-out of new in-app items to live inbox streams.

    ``publish`` returns once the item has its place in the user's durable feed (so a stream
    that reconnects later replays it) and the streams of every process have been told.
    """

    async def publish(self, user_id: str, item: dict[str, Any]) -> None:
        """Number ``item`` (an in-app delivery's view, with its ``id``) in ``user_id``'s feed
        (:meth:`InboxFeed.append`: publishing it again keeps its number), then wake that user's
        streams in every process (:meth:`LiveSignals.notify`, best effort). Returns once the
        number is committed; raises ServiceUnavailable when the feed cannot be written (the
        in_app provider turns that into a transient error: the send is retried)."""
        ...


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One item of a user's feed: its number (the stream's event id) and its delivery."""

    seq: int  # the item's number in its user's feed: the stream's event id
    delivery: Delivery


class InboxFeed(Protocol):
    """The durable order of live inbox items, numbered per user (issue 19).

    Numbers are given in commit order per user: once a reader saw number ``n``, no item with a
    lower number can appear later, so ``after(user, n)`` is a complete resume.
    """

    async def append(self, items: Sequence[tuple[str, str]], *, now: float) -> dict[str, int]:
        """Number each ``(user_id, delivery_id)``; an item appended again keeps its number.
        Returns {delivery id: its number}. Per user the numbers are 1, 2, 3 … with no gap,
        committed before this returns (concurrent appends may be written in one transaction)."""
        ...

    async def head(self, user_id: str) -> int:
        """The user's last number (0: nothing yet)."""
        ...

    async def after(self, user_id: str, seq: int, *, limit: int) -> tuple[list[InboxEntry], int]:
        """The user's items numbered above ``seq`` in order, at most ``limit``, and the user's
        unread count (in-app deliveries sent or delivered and not read, plus those of the
        returned items still being sent), read in one transaction."""
        ...


class LiveSignals(Protocol):
    """Wake-ups of live streams across processes: "user X has news". Best effort: streams
    read what changed from the database (:class:`InboxFeed`) and also look on their own every
    heartbeat, so a lost signal costs latency, never an item."""

    async def start(self) -> None:
        """Start listening for other processes' signals (PostgreSQL: ``LISTEN``; in-process:
        nothing). Returns once listening, or after a short timeout (streams then rely on their
        heartbeat until the listener is up)."""
        ...

    def notify(self, user_id: str) -> None:
        """Wake the streams of ``user_id`` in every process (this one included)."""
        ...

    def on_wake(self, callback: Callable[[str | None], None]) -> None:
        """Call ``callback(user_id)`` for every wake-up (``None``: everyone, after a gap)."""
        ...

    async def close(self) -> None:
        """Stop listening and sending; no callback is called after this returns."""
        ...
