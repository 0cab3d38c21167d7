"""The delivery funnel, for the API (``GET /v1/stats``), ``herald stats`` and the console.

Read from the hourly rollups (never a scan of the deliveries): sent, delivered, opened,
clicked, bounced, failed, dead, skipped by reason, machine opens and clicks apart, and the
rates, grouped by any of template, category, channel and provider and by hour or day over a
range. A bucket is the hour (or UTC day) the deliveries were created in: an open on Tuesday of
Monday's message counts on Monday, so each bucket's rates are those of its messages.

:meth:`StatsService.funnel` is the one call; its result is plain JSON-ready data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from herald.domain.errors import ValidationError
from herald.domain.funnel import BUCKETS, DAY, DIMENSIONS, HOUR, summarize
from herald.ports import Clock, FunnelQuery, StatsServiceStore

DEFAULT_RANGE = 7 * DAY
MAX_RANGE = {"hour": 93 * DAY, "day": 3 * 366 * DAY, None: 3 * 366 * DAY}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class StatsService:
    def __init__(self, store: StatsServiceStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def query(
        self,
        *,
        by: Sequence[str] = (),
        bucket: str | None = None,
        since: float | None = None,
        until: float | None = None,
        filters: Mapping[str, str | None] | None = None,
    ) -> FunnelQuery:
        """Check and complete a funnel request (ValidationError names the field)."""
        dims: list[str] = []
        for name in by:
            for raw in name.split(","):
                part = raw.strip()
                if not part:
                    continue
                if part not in DIMENSIONS:
                    raise ValidationError(
                        f"cannot group by {part!r}; one or more of {', '.join(DIMENSIONS)}", field="by"
                    )
                if part not in dims:
                    dims.append(part)
        if bucket is not None and bucket not in BUCKETS:
            choices = ", ".join(BUCKETS)
            raise ValidationError(f"bucket must be one of {choices}, not {bucket!r}", field="bucket")
        if until is None:
            until = (int(self.clock.now() // HOUR) + 1) * HOUR  # through the current hour
        if since is None:
            since = until - DEFAULT_RANGE
        if since >= until:
            raise ValidationError("since must be before until", field="since")
        if until - since > MAX_RANGE[bucket]:
            days = MAX_RANGE[bucket] // DAY
            raise ValidationError(f"the range is longer than {days} days for bucket={bucket}", field="since")
        if bucket == "day":  # day buckets are whole UTC days
            since = (since // DAY) * DAY
            until = -((-until) // DAY) * DAY
        chosen = {k: v for k, v in (filters or {}).items() if v is not None}
        for name in chosen:
            if name not in DIMENSIONS:
                raise ValidationError(f"unknown filter {name!r}", field=name)
        return FunnelQuery(by=tuple(dims), bucket=bucket, since=since, until=until, filters=chosen)

    async def ping(self) -> None:
        """The database answers (readiness); ServiceUnavailable when it does not."""
        await self.store.ping()

    async def current(self) -> dict[str, Any]:
        """The deliveries per status and channel now (``by_status``, ``by_channel``,
        ``by_channel_provider``) and the ambiguous sends: counted from the status log itself,
        slower with millions of deliveries (``GET /v1/stats`` without ``by`` or ``bucket``)."""
        rows = await self.store.delivery_counts()
        by_status: dict[str, int] = {}
        by_channel: dict[str, dict[str, int]] = {}
        for ch, status, _provider, count in rows:
            by_status[status] = by_status.get(status, 0) + count
            per = by_channel.setdefault(ch, {})
            per[status] = per.get(status, 0) + count
        return {
            "by_status": by_status,
            "by_channel": by_channel,
            "by_channel_provider": [
                {"channel": ch, "status": st, "provider": pr, "count": n} for ch, st, pr, n in rows
            ],
            "ambiguous_sends": await self.store.ambiguous_count(),
        }

    async def funnel(self, q: FunnelQuery) -> dict[str, Any]:
        rows = await self.store.funnel_counts(q)
        n = len(q.by)
        groups: dict[tuple[Any, ...], dict[str, int]] = {}
        total: dict[str, int] = {}
        for row in rows:
            key = tuple(row[: n + 1])
            metric, count = str(row[n + 1]), int(row[n + 2])
            per = groups.setdefault(key, {})
            per[metric] = per.get(metric, 0) + count
            total[metric] = total.get(metric, 0) + count
        out_rows: list[dict[str, Any]] = []
        for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
            entry: dict[str, Any] = dict(zip(q.by, key[:n], strict=True))
            if q.bucket is not None:
                entry["bucket"] = _iso(float(key[n]))
            entry.update(summarize(groups[key]))
            out_rows.append(entry)
        return {
            "by": list(q.by),
            "bucket": q.bucket,
            "since": _iso(q.since),
            "until": _iso(q.until),
            "filters": dict(q.filters),
            "rows": out_rows,
            "total": summarize(total),
        }
