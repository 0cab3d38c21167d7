"""Pure policies: retry backoff and Retry-After handling."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Delay before each attempt: ``delays[0]`` is the first attempt (normally 0).

    After ``len(delays)`` failed attempts the delivery is dead.
    """

    delays: Sequence[float] = (0.0, 60.0, 300.0, 1800.0)
    jitter: float = 0.1

    @property
    def max_attempts(self) -> int:
        return len(self.delays)

    def next_delay(
        self, attempts_made: int, *, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float | None:
        """Seconds until the next attempt after ``attempts_made`` failures, or None when exhausted.

        Jitter only ever lengthens the wait, and a provider's Retry-After pushes the next
        attempt later, never earlier.
        """
        if attempts_made >= len(self.delays):
            return None
        base = float(self.delays[attempts_made])
        if base > 0 and self.jitter > 0:
            base += base * self.jitter * (rng or random).random()
        if retry_after is not None and retry_after > base:
            return retry_after
        return base


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - now)
    return max(0.0, seconds)


def parse_rate_limit_reset(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from ``X-RateLimit-Reset`` (an epoch second, as SendGrid sends it)."""
    if value is None:
        return None
    try:
        reset = float(value.strip())
    except ValueError:
        return None
    if reset > 1_000_000_000:  # an absolute epoch time
        return max(0.0, reset - now)
    return max(0.0, reset)
