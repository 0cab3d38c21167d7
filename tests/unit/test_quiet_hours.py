"""Quiet hours, budgets and digest schedules: the pure functions."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from herald.domain.quiet_hours import check_digest_schedule, parse_budget, quiet_until

PARIS = ZoneInfo("Europe/Paris")
NIGHT = {"start": "22:00", "end": "07:00"}


def at(y: int, mo: int, d: int, h: int, mi: int, tz: ZoneInfo = PARIS) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()


def local(epoch: float | None, tz: ZoneInfo = PARIS) -> str:
    assert epoch is not None
    return datetime.fromtimestamp(epoch, tz).strftime("%Y-%m-%d %H:%M %Z")


def test_spanning_midnight_before_and_after_midnight() -> None:
    assert local(quiet_until(NIGHT, "Europe/Paris", at(2026, 6, 10, 23, 30))) == "2026-06-11 07:00 CEST"
    assert local(quiet_until(NIGHT, "Europe/Paris", at(2026, 6, 11, 3, 0))) == "2026-06-11 07:00 CEST"
    assert local(quiet_until(NIGHT, "Europe/Paris", at(2026, 6, 10, 22, 0))) == "2026-06-11 07:00 CEST"


def test_outside_quiet_hours_is_none() -> None:
    assert quiet_until(NIGHT, "Europe/Paris", at(2026, 6, 10, 7, 0)) is None  # end is exclusive
    assert quiet_until(NIGHT, "Europe/Paris", at(2026, 6, 10, 12, 0)) is None
    assert quiet_until(NIGHT, "Europe/Paris", at(2026, 6, 10, 21, 59)) is None
    assert quiet_until(None, "Europe/Paris", at(2026, 6, 10, 23, 0)) is None


def test_not_spanning_midnight() -> None:
    siesta = {"start": "13:00", "end": "15:00"}
    assert local(quiet_until(siesta, "Europe/Paris", at(2026, 6, 10, 14, 0))) == "2026-06-10 15:00 CEST"
    assert quiet_until(siesta, "Europe/Paris", at(2026, 6, 10, 15, 0)) is None
    assert quiet_until(siesta, "Europe/Paris", at(2026, 6, 10, 23, 0)) is None


def test_start_equal_end_means_no_quiet_hours() -> None:
    assert quiet_until({"start": "22:00", "end": "22:00"}, "Europe/Paris", at(2026, 6, 10, 22, 0)) is None


def test_autumn_dst_change_end_is_still_seven_local() -> None:
    # Sunday 2026-10-25 03:00 CEST -> 02:00 CET.
    until = quiet_until(NIGHT, "Europe/Paris", at(2026, 10, 24, 23, 30))
    assert local(until) == "2026-10-25 07:00 CET"
    assert until == datetime(2026, 10, 25, 6, 0, tzinfo=ZoneInfo("UTC")).timestamp()


def test_spring_dst_change_end_is_still_seven_local() -> None:
    # Sunday 2026-03-29 02:00 CET -> 03:00 CEST.
    until = quiet_until(NIGHT, "Europe/Paris", at(2026, 3, 28, 23, 30))
    assert local(until) == "2026-03-29 07:00 CEST"
    assert until == datetime(2026, 3, 29, 5, 0, tzinfo=ZoneInfo("UTC")).timestamp()


def test_end_inside_a_spring_gap_moves_past_it() -> None:
    until = quiet_until({"start": "01:00", "end": "02:30"}, "Europe/Paris", at(2026, 3, 29, 1, 30))
    assert local(until) == "2026-03-29 03:30 CEST"


def test_default_timezone_is_utc() -> None:
    utc = ZoneInfo("UTC")
    until = quiet_until(NIGHT, None, at(2026, 6, 10, 23, 0, utc))
    assert local(until, utc) == "2026-06-11 07:00 UTC"


@pytest.mark.parametrize(
    ("text", "limit", "window"),
    [("3/day", 3, 86_400), ("10/week", 10, 604_800), ("5/hour", 5, 3600), ("20/2d", 20, 172_800),
     ("100/1h", 100, 3600)],
)
def test_parse_budget(text: str, limit: int, window: float) -> None:
    b = parse_budget(text)
    assert (b.limit, b.window) == (limit, window)


@pytest.mark.parametrize("text", ["", "3", "3/fortnight", "0/day", "-1/day", "x/day", "3/0d"])
def test_bad_budget(text: str) -> None:
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


@pytest.mark.parametrize("text", ["off", "hourly", "daily@09:00", "weekly@mon 09:00", "weekly@sun 23:59"])
def test_digest_schedules(text: str) -> None:
    assert check_digest_schedule(text) == text


@pytest.mark.parametrize("text", ["daily", "daily@25:00", "daily@9:00", "weekly@monday 09:00", "monthly", ""])
def test_bad_digest_schedules(text: str) -> None:
    with pytest.raises(ValueError):
        check_digest_schedule(text)
