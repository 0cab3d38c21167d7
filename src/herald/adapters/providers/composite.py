"""Providers made of providers: failover with circuit breakers and send-rate limits, and push
dispatch by device kind.

Failover: a channel lists providers in order. Each has a circuit breaker that opens after
``threshold`` consecutive transient or configuration failures (or at once for the time a 429's
Retry-After asks), stays open ``open_seconds``, then lets one probe through (half-open): a
success closes it, a failure opens it again. A send goes to the first provider whose breaker
allows it and that is under its send rate. A failure that left the message *surely* unsent
(not ambiguous, not permanent) falls through to the next provider within the same attempt; an
ambiguous one does not, since the first provider may have the message. Permanent errors and
dead addresses are about the message, not the provider, and are raised as they are.

Send-rate limits are counted through the Cache port, so every worker process shares them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

from herald.domain.errors import (
    DeliveryError,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, SendReceipt
from herald.domain.rates import RateLimit
from herald.ports import Cache, Provider

__all__ = ["CircuitBreaker", "FailoverProvider", "RateLimit"]


class CircuitBreaker:
    def __init__(self, *, threshold: int = 5, open_seconds: float = 30.0, clock: Callable[[], float]) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.paused_until = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self._clock() - self.opened_at >= self.open_seconds:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        if self._clock() < self.paused_until:
            return False
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True  # one probe at a time
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._probing = False

    def failure(self) -> None:
        self.failures += 1
        self._probing = False
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self._clock()

    def pause(self, seconds: float) -> None:
        """The provider asked us to wait (429 + Retry-After): skip it until then."""
        self.paused_until = max(self.paused_until, self._clock() + seconds)


class FailoverProvider:
    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        cache: Cache | None = None,
        rates: Mapping[str, RateLimit] | None = None,
        threshold: int = 5,
        open_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        max_rate_wait: float = 2.0,
    ) -> None:
        if not providers:
            raise ValueError("a failover provider needs at least one provider")
        self.providers = list(providers)
        self.name = (
            self.providers[0].name if len(self.providers) == 1 else "+".join(p.name for p in providers)
        )
        self.cache = cache
        self.rates = dict(rates or {})
        self.breakers = {
            p.name: CircuitBreaker(threshold=threshold, open_seconds=open_seconds, clock=clock)
            for p in providers
        }
        self._wall = wall
        self.max_rate_wait = max_rate_wait

    async def _under_rate(self, name: str) -> bool:
        rate = self.rates.get(name)
        if rate is None or self.cache is None:
            return True
        return await self.cache.hit_window(
            f"rate:{name}", limit=rate.limit, window=rate.per_seconds, now=self._wall()
        )

    async def send(self, message: OutboundMessage) -> SendReceipt:
        deadline = time.monotonic() + self.max_rate_wait
        while True:
            result = await self._try_all(message)
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise TransientDeliveryError(
                    "every provider of the channel is open-circuited, paused or at its send rate",
                    code="no_provider_available",
                    retry_after=5.0,
                    provider=self.providers[0].name,
                )
            await asyncio.sleep(0.05)

    async def _try_all(self, message: OutboundMessage) -> SendReceipt | None:
        notes: list[str] = []
        last: DeliveryError | None = None
        for p in self.providers:
            breaker = self.breakers[p.name]
            if not breaker.allow():
                continue
            if not await self._under_rate(p.name):
                breaker._probing = False
                continue
            try:
                receipt = await p.send(message)
            except PermanentDeliveryError as exc:
                breaker.success()  # the provider answered properly; the message is at fault
                exc.provider = exc.provider or p.name
                raise
            except (TransientDeliveryError, ProviderConfigError) as exc:
                exc.provider = exc.provider or p.name
                breaker.failure()
                if exc.retry_after:
                    breaker.pause(exc.retry_after)
                if exc.ambiguous:
                    raise
                notes.append(f"{p.name}: {exc.code} {exc.detail[:80]}")
                last = exc
                continue
            breaker.success()
            receipt.provider = receipt.provider or p.name
            if notes:
                receipt.detail = "; ".join([*notes, f"sent by {receipt.provider}"])
            return receipt
        if last is not None:
            if notes and len(notes) > 1:
                last.detail = "; ".join(notes)
            raise last
        return None

    def states(self) -> dict[str, str]:
        return {name: b.state for name, b in self.breakers.items()}

    async def close(self) -> None:
        for p in self.providers:
            await p.close()


class PushDispatcher:
    """Sends each push through the provider for its device's kind (apns, fcm, webpush)."""

    name = "push"

    def __init__(self, by_kind: Mapping[str, Provider], fallback: Provider | None = None) -> None:
        self.by_kind = dict(by_kind)
        self.fallback = fallback

    async def send(self, message: OutboundMessage) -> SendReceipt:
        kind = str(message.metadata.get("device_kind") or "")
        provider = self.by_kind.get(kind) or self.fallback
        if provider is None:
            raise ProviderConfigError(
                f"no push provider is configured for {kind or 'unknown'} devices",
                code="no_provider",
                provider=f"push:{kind}",
            )
        try:
            receipt = await provider.send(message)
        except DeliveryError as exc:
            exc.provider = exc.provider or provider.name
            raise
        receipt.provider = receipt.provider or provider.name
        return receipt

    async def close(self) -> None:
        seen: set[int] = set()
        for p in [*self.by_kind.values(), *([self.fallback] if self.fallback else [])]:
            if id(p) not in seen:
                seen.add(id(p))
                await p.close()
