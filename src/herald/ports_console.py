"""The operator console's read model: a port of its own (beside :mod:`herald.ports`).

Implemented by ``adapters/store/sql_console.py``. Every read is bounded by an index, so a
console page costs the same with a thousand deliveries or a million.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from herald.domain.models import Attempt, Delivery


@dataclass(slots=True)
class SearchQuery:
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
    async def bucket_counts(self, ranges: Sequence[tuple[float, float]]) -> list[list[BucketCount]]:
        """One list per ``[start, end)`` range of creation times (epoch seconds)."""
        ...

    async def search(self, qry: SearchQuery) -> list[tuple[Delivery, str | None]]:
        """Deliveries matching every given filter, newest first, with their notification's
        template or event type; at most ``qry.limit``."""
        ...

    async def attempts(
        self, delivery_ids: Sequence[str], *, last_only: bool = False
    ) -> dict[str, list[Attempt]]: ...

    async def count_matching(self, qry: SearchQuery, *, cap: int) -> int:
        """How many deliveries match, counted up to ``cap``."""
        ...

    async def matching_ids(self, qry: SearchQuery, *, cap: int) -> list[str]: ...

    async def status_total(self, status: str) -> int:
        """Deliveries in ``status`` (``dead`` or ``failed``: the partially indexed ones)."""
        ...

    async def ambiguous_total(self) -> int: ...

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

    async def topics(self, limit: int = 200) -> list[dict[str, Any]]: ...

    async def broadcasts(self, limit: int = 50) -> list[dict[str, Any]]: ...
