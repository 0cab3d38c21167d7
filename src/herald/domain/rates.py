"""Send rates as configured (``"100/s"``, ``"600/1m"``): parsed once, at start."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RateLimit:
    limit: int
    per_seconds: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``"100/s"``, ``"600/1m"``, ``"10000/h"``."""
        try:
            count, _, period = text.strip().partition("/")
            unit = period.strip()[-1:] if period.strip()[-1:] in ("s", "m", "h") else "s"
            amount = period.strip()[:-1] if period.strip()[-1:] in ("s", "m", "h") else period.strip()
            seconds = float(amount or 1) * {"s": 1, "m": 60, "h": 3600}[unit]
            limit = int(count)
        except (ValueError, KeyError, IndexError):
            raise ValueError(f"rate {text!r} is not like '100/s' or '600/1m'") from None
        if limit < 1 or seconds <= 0:
            raise ValueError(f"rate {text!r} must be positive")
        return cls(limit, seconds)
