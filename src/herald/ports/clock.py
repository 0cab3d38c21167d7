"""Time, as a port: services read it from here, never from ``time``, so tests can move it."""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """Wall-clock time. Tests substitute a clock they can move (``herald.testing.FakeClock``)."""

    def now(self) -> float:
        """Seconds since the epoch, as a float. Not monotonic: retries, schedules and leases
        are all compared against this same clock, in every process."""
        ...
