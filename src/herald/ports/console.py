"""The operator console's read model: a port of its own, beside the store's roles.

Implemented by ``adapters/store/sql_console.py``. Every read is bounded by an index, so a
console page costs the same with a thousand deliveries or a million. Reads only: the console's
writes go through the store's roles (:class:`herald.ports.store.ConsoleServiceStore`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from herald.domain.models import Attempt, Delivery


@dataclass(slots=True)
class SearchQuery:
    """A console search of deliveries: every given field must match; ``since``/``until`` bound
    the creation time (epoch seconds); ``cursor`` is the last delivery id of the page before."""

    notification_id: str | None = None
    user_id: str | None = None
    status: str | None = None
    channel: str | None = None
    template: str | None = None  # the template name (or event type) of the notification
    provider: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None
    cursor: str | None = None  # a delivery id: newest first, the next page is below it
    limit: int = 50


@dataclass(slots=True)
class BucketCount:
    """Deliveries created in one time range, per channel and current status."""

    channel: str
    status: str
    count: int
    sent: int  # of them, how many were sent (sent_at set) ...
    delivered: int
    read: int


class ConsoleReads(Protocol):
    """What the console's pages read, each call one read-only transaction."""

    async def bucket_counts(self, ranges: Sequence[tuple[float, float]]) -> list[list[BucketCount]]:
        """One list per ``[start, end)`` range of creation times (epoch seconds), in the order
        of ``ranges``: deliveries per channel and current status, with how many of them were
        sent, delivered and read."""
        ...

    async def search(self, qry: SearchQuery) -> list[tuple[Delivery, str | None]]:
        """Deliveries matching every given filter, newest first, with their notification's
        template or event type; at most ``qry.limit`` (without their attempts: see
        :meth:`attempts`)."""
        ...

    async def attempts(
        self, delivery_ids: Sequence[str], *, last_only: bool = False
    ) -> dict[str, list[Attempt]]:
        """{delivery id: its attempts, oldest first} for those of ``delivery_ids`` with any
        (absent: none yet); ``last_only``: each delivery's latest attempt only."""
        ...

    async def count_matching(self, qry: SearchQuery, *, cap: int) -> int:
        """How many deliveries match, counted up to ``cap``."""
        ...

    async def matching_ids(self, qry: SearchQuery, *, cap: int) -> list[str]:
        """The ids of the deliveries matching ``qry`` (its ``limit`` ignored), newest first,
        at most ``cap`` (a bulk action's selection)."""
        ...

    async def status_total(self, status: str) -> int:
        """Deliveries in ``status`` (``dead`` or ``failed``: the partially indexed ones; any
        other status raises ValueError)."""
        ...

    async def ambiguous_total(self) -> int:
        """How many attempts ever ended ambiguous (the provider may have the message)."""
        ...

    async def queue_depth(self, channels: Sequence[str]) -> list[tuple[str, int, int]]:
        """(channel, priority rank, count) of queued and retrying deliveries."""
        ...

    async def templates(self) -> list[dict[str, Any]]:
        """Each template's latest version row with ``versions`` (how many)."""
        ...

    async def template_versions(self, name: str) -> list[tuple[int, float, bool]]:
        """(version, created_at, deleted), newest first."""
        ...

    async def suppressions(self, addresses: Sequence[tuple[str, str]]) -> list[tuple[str, str, str, float]]:
        """Of these (channel, address) pairs, the suppressed ones: (channel, address, reason, at)."""
        ...

    async def devices(self, user_id: str) -> list[dict[str, Any]]:
        """Every device of the user, active or not."""
        ...

    async def topics(self, limit: int = 200) -> list[dict[str, Any]]:
        """The first ``limit`` topics by key, each row with its ``subscribers`` count."""
        ...

    async def broadcasts(self, limit: int = 50) -> list[dict[str, Any]]:
        """Up to ``limit`` topic sends with their status and fan-out progress
        (``recipients_total``, ``recipients_routed``), returned newest first. They are read
        in the order of ``ix_notifications_topic`` (topic key, then newest first), so with
        more than ``limit`` sends the ones kept are those of the first topics by key."""
        ...
