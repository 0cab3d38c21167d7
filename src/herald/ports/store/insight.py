"""The insight role of the store: counts and ages for metrics, stats and the funnel. Reads
only, each one transaction; none changes anything."""

from __future__ import annotations

from typing import Any, Protocol

from herald.ports.records import FunnelQuery


class InsightStore(Protocol):
    """Aggregates over deliveries, attempts and the funnel's rollups."""

    async def delivery_counts(self, *, since: float | None = None) -> list[tuple[str, str, str | None, int]]:
        """(channel, status, provider, count): one row per combination present among the
        deliveries created since ``since`` (every delivery when None)."""
        ...

    async def queue_depth(self) -> list[tuple[str, int, int]]:
        """(channel, priority rank, count) of deliveries waiting to be sent (queued or
        retrying, due or not), one row per lane with any."""
        ...

    async def ambiguous_count(self) -> int:
        """How many attempts ever ended ambiguous (the provider may have the message)."""
        ...

    async def queue_ages(self, *, now: float) -> list[tuple[str, int, int, float]]:
        """(channel, priority rank, waiting count, age in seconds of the oldest one due).

        One row per lane with waiting (queued or retrying) deliveries; the age is 0 when none
        of them is due yet (a retry due later is not late)."""
        ...

    async def oldest_unrouted(self) -> float | None:
        """When the oldest accepted notification not yet routed was accepted (None: none).
        Notifications being routed count as not yet routed."""
        ...

    async def funnel_counts(self, q: FunnelQuery) -> list[tuple[Any, ...]]:
        """Rows of (*dimensions in ``q.by``, bucket start or None, metric, count), summed from
        the rollups (see :mod:`herald.domain.funnel`)."""
        ...
