"""Quiet hours, per-user budgets and digest schedules: pure functions, no I/O.

Quiet hours are wall-clock times in the user's IANA time zone; the end of a quiet period is
computed in local wall time, so "07:00" stays 07:00 local across a DST change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_BUDGET = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day|w|week)\s*$")
_UNITS = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hour": 3600,
    "d": 86_400, "day": 86_400,
    "w": 604_800, "week": 604_800,
}
_DIGEST = re.compile(r"^(off|hourly|daily@(\d\d:\d\d)|weekly@(mon|tue|wed|thu|fri|sat|sun) (\d\d:\d\d))$")


def parse_hhmm(value: str) -> time:
    m = _HHMM.match(value)
    if m is None:
        raise ValueError(f"expected HH:MM (00:00-23:59), got {value!r}")
    return time(int(m.group(1)), int(m.group(2)))


def zone(name: str | None) -> ZoneInfo:
    """The user's zone; UTC when unset or unknown (profiles are validated on write)."""
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):  # a folder, a bad name
        return ZoneInfo("UTC")


def _wall_to_epoch(day: date, at: time, tz: ZoneInfo) -> float:
    """Epoch of local wall time ``day at`` in ``tz``.

    With ``fold=0`` (PEP 495) an ambiguous wall time (autumn) resolves to its first occurrence
    and one skipped by a spring-forward gap to the instant the same distance past the gap.
    """
    return datetime.combine(day, at, tzinfo=tz).timestamp()


def quiet_until(quiet: Mapping[str, Any] | None, timezone: str | None, now: float) -> float | None:
    """None when ``now`` is outside quiet hours, else the epoch at which they end.

    ``quiet`` is ``{"start": "22:00", "end": "07:00"}`` (may span midnight). Start is inclusive,
    end exclusive. ``start == end`` means no quiet hours (an empty period, not a whole day).
    """
    if not quiet:
        return None
    start, end = parse_hhmm(str(quiet["start"])), parse_hhmm(str(quiet["end"]))
    if start == end:
        return None
    tz = zone(timezone)
    local = datetime.fromtimestamp(now, UTC).astimezone(tz)
    t = local.time().replace(tzinfo=None, second=0, microsecond=0)
    today = local.date()
    if start < end:  # e.g. 13:00-15:00, same day
        if start <= t < end:
            return _wall_to_epoch(today, end, tz)
        return None
    # Spans midnight, e.g. 22:00-07:00.
    if t >= start:
        return _wall_to_epoch(today + timedelta(days=1), end, tz)
    if t < end:
        return _wall_to_epoch(today, end, tz)
    return None


@dataclass(frozen=True, slots=True)
class Budget:
    limit: int
    window: float  # seconds


def parse_budget(value: str) -> Budget:
    """``"3/day"``, ``"10/week"``, ``"5/hour"``, ``"20/2d"``, ``"100/1h"``."""
    m = _BUDGET.match(value.lower())
    if m is None:
        raise ValueError(f"expected a budget like '3/day', '10/week' or '5/1h', got {value!r}")
    count, mult, unit = int(m.group(1)), int(m.group(2) or 1), m.group(3)
    if count < 1 or mult < 1:
        raise ValueError(f"a budget needs a positive count and period, got {value!r}")
    return Budget(limit=count, window=float(mult * _UNITS[unit]))


def check_digest_schedule(value: str) -> str:
    """``off``, ``hourly``, ``daily@HH:MM`` or ``weekly@<mon..sun> HH:MM``; ValueError otherwise."""
    m = _DIGEST.match(value.strip().lower())
    if m is None:
        raise ValueError(
            f"expected 'off', 'hourly', 'daily@HH:MM' or 'weekly@<mon..sun> HH:MM', got {value!r}"
        )
    hhmm = m.group(2) or m.group(4)
    if hhmm is not None:
        parse_hhmm(hhmm)
    return m.group(0)


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def next_digest_time(schedule: str, timezone: str | None, after: float) -> float | None:
    """The first digest time strictly after ``after`` for ``schedule`` in the user's zone.

    ``hourly`` is the next full hour of local time; ``daily@HH:MM`` and ``weekly@<day> HH:MM``
    are local wall times, so ``daily@09:00`` is 09:00 local on both sides of a DST change (the
    interval between two digests is then 23 or 25 hours). A wall time skipped by a spring-forward
    gap resolves to the instant the same distance past the gap; one repeated in autumn to its
    first occurrence (one digest that day, not two). None for ``off``; ValueError when
    ``schedule`` is not a valid digest schedule.
    """
    m = _DIGEST.match(check_digest_schedule(schedule))
    assert m is not None  # checked above
    if m.group(1) == "off":
        return None
    tz = zone(timezone)
    local = datetime.fromtimestamp(after, UTC).astimezone(tz)
    if m.group(1) == "hourly":
        top = local.replace(minute=0, second=0, microsecond=0).timestamp()
        return top + 3600.0
    if m.group(2) is not None:  # daily@HH:MM
        at, step, day = parse_hhmm(m.group(2)), 1, local.date()
    else:  # weekly@<day> HH:MM
        at, step = parse_hhmm(m.group(4)), 7
        day = local.date() + timedelta(days=(_WEEKDAYS.index(m.group(3)) - local.weekday()) % 7)
    candidate = _wall_to_epoch(day, at, tz)
    while candidate <= after:
        day += timedelta(days=step)
        candidate = _wall_to_epoch(day, at, tz)
    return candidate


__all__ = [
    "Budget",
    "check_digest_schedule",
    "next_digest_time",
    "parse_budget",
    "parse_hhmm",
    "quiet_until",
    "zone",
]
