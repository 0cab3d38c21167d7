"""Digest schedules: when the next digest goes out, in the user's zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from herald.domain.quiet_hours import next_digest_time

NY = ZoneInfo("America/New_York")
NEW_YORK = "America/New_York"


def ny(y: int, mo: int, d: int, h: int, mi: int = 0, s: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=NY).timestamp()


def local(epoch: float | None, tz: ZoneInfo = NY) -> str:
    assert epoch is not None
    return datetime.fromtimestamp(epoch, tz).strftime("%a %Y-%m-%d %H:%M %Z")


def nxt(schedule: str, after: float) -> str:
    """The next digest time for a New York user, as local wall time."""
    return local(next_digest_time(schedule, NEW_YORK, after))


def utc(epoch: float | None) -> str:
    assert epoch is not None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


# -- daily ---------------------------------------------------------------------------------------


def test_daily_before_the_time_is_today_after_it_is_tomorrow() -> None:
    assert nxt("daily@09:00", ny(2026, 6, 10, 8, 59)) == "Wed 2026-06-10 09:00 EDT"
    assert nxt("daily@09:00", ny(2026, 6, 10, 14, 0)) == "Thu 2026-06-11 09:00 EDT"
    assert nxt("daily@09:00", ny(2026, 6, 10, 23, 59)) == "Thu 2026-06-11 09:00 EDT"


def test_daily_is_strictly_after() -> None:
    # An item routed exactly at the digest time waits for the next one (that digest is being built).
    assert nxt("daily@09:00", ny(2026, 6, 10, 9, 0)) == "Thu 2026-06-11 09:00 EDT"


def test_daily_across_the_spring_forward_day_is_still_0900_local() -> None:
    # 2026-03-08: New York goes from EST (-5) to EDT (-4) at 02:00.
    due = next_digest_time("daily@09:00", NEW_YORK, ny(2026, 3, 7, 15, 0))
    assert local(due) == "Sun 2026-03-08 09:00 EDT"
    assert utc(due) == "2026-03-08 13:00"
    before = next_digest_time("daily@09:00", NEW_YORK, ny(2026, 3, 6, 15, 0))
    assert due is not None and before is not None
    assert due - before == 23 * 3600  # the day is 23 hours long


def test_daily_across_the_fall_back_day_is_still_0900_local() -> None:
    # 2026-11-01: New York goes from EDT back to EST at 02:00.
    due = next_digest_time("daily@09:00", NEW_YORK, ny(2026, 10, 31, 15, 0))
    assert local(due) == "Sun 2026-11-01 09:00 EST"
    assert utc(due) == "2026-11-01 14:00"
    before = next_digest_time("daily@09:00", NEW_YORK, ny(2026, 10, 30, 15, 0))
    assert due is not None and before is not None
    assert due - before == 25 * 3600


def test_daily_time_inside_the_spring_gap_and_the_repeated_autumn_hour() -> None:
    # 02:30 does not exist on 2026-03-08: the digest goes at 03:30 EDT, the same distance past the gap.
    assert nxt("daily@02:30", ny(2026, 3, 7, 12, 0)) == "Sun 2026-03-08 03:30 EDT"
    # 01:30 happens twice on 2026-11-01: one digest, at the first occurrence (EDT).
    first = next_digest_time("daily@01:30", NEW_YORK, ny(2026, 10, 31, 12, 0))
    assert local(first) == "Sun 2026-11-01 01:30 EDT"
    assert first is not None
    # Right after it (even during the repeated hour) the next one is the following day.
    assert local(next_digest_time("daily@01:30", NEW_YORK, first + 60)) == "Mon 2026-11-02 01:30 EST"
    assert local(next_digest_time("daily@01:30", NEW_YORK, first + 3600)) == "Mon 2026-11-02 01:30 EST"


# -- hourly --------------------------------------------------------------------------------------


def test_hourly_is_the_next_full_hour() -> None:
    assert nxt("hourly", ny(2026, 6, 10, 14, 25)) == "Wed 2026-06-10 15:00 EDT"
    assert nxt("hourly", ny(2026, 6, 10, 14, 0)) == "Wed 2026-06-10 15:00 EDT"
    assert nxt("hourly", ny(2026, 6, 10, 23, 59, 59)) == "Thu 2026-06-11 00:00 EDT"


def test_hourly_in_a_half_hour_zone_is_the_local_full_hour() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")  # UTC+05:30
    after = datetime(2026, 6, 10, 14, 10, tzinfo=kolkata).timestamp()
    assert local(next_digest_time("hourly", "Asia/Kolkata", after), kolkata) == "Wed 2026-06-10 15:00 IST"


def test_hourly_across_dst_changes_is_one_hour_of_real_time() -> None:
    # Spring: 01:30 EST -> next full hour is 03:00 EDT (02:00 does not exist), 30 minutes later.
    after = ny(2026, 3, 8, 1, 30)
    due = next_digest_time("hourly", NEW_YORK, after)
    assert local(due) == "Sun 2026-03-08 03:00 EDT"
    assert due == after + 1800
    # Autumn: during the second 01:xx (EST) the next hour is 02:00 EST, not the first 02:00.
    second_0130 = datetime(2026, 11, 1, 1, 30, tzinfo=NY, fold=1).timestamp()
    due = next_digest_time("hourly", NEW_YORK, second_0130)
    assert local(due) == "Sun 2026-11-01 02:00 EST"
    assert due == second_0130 + 1800


# -- weekly --------------------------------------------------------------------------------------


def test_weekly_monday_0900() -> None:
    # 2026-06-10 is a Wednesday.
    assert nxt("weekly@mon 09:00", ny(2026, 6, 10, 12, 0)) == "Mon 2026-06-15 09:00 EDT"
    assert nxt("weekly@mon 09:00", ny(2026, 6, 15, 8, 0)) == "Mon 2026-06-15 09:00 EDT"
    assert nxt("weekly@mon 09:00", ny(2026, 6, 15, 9, 0)) == "Mon 2026-06-22 09:00 EDT"
    assert nxt("weekly@sun 23:59", ny(2026, 6, 15, 9, 0)) == "Sun 2026-06-21 23:59 EDT"


def test_weekly_across_a_dst_change_keeps_local_time() -> None:
    # From Wednesday 2026-03-04 (EST) to Monday 2026-03-09, after the change (EDT).
    due = next_digest_time("weekly@mon 09:00", NEW_YORK, ny(2026, 3, 4, 12, 0))
    assert local(due) == "Mon 2026-03-09 09:00 EDT"
    assert utc(due) == "2026-03-09 13:00"


def test_schedule_in_other_zones_and_without_zone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    after = datetime(2026, 6, 10, 12, 0, tzinfo=tokyo).timestamp()
    assert local(next_digest_time("daily@09:00", "Asia/Tokyo", after), tokyo) == "Thu 2026-06-11 09:00 JST"
    # No (or an unknown) zone: UTC.
    after = datetime(2026, 6, 10, 12, 0, tzinfo=UTC).timestamp()
    assert utc(next_digest_time("daily@09:00", None, after)) == "2026-06-11 09:00"


def test_off_is_none_and_bad_schedules_are_refused() -> None:
    assert next_digest_time("off", NEW_YORK, ny(2026, 6, 10, 12, 0)) is None
    for bad in ("daily@9", "weekly@funday 09:00", "monthly"):
        with pytest.raises(ValueError, match="expected"):
            next_digest_time(bad, NEW_YORK, ny(2026, 6, 10, 12, 0))
