"""Deliver, the results: what a send's outcome becomes, and their group commit.

:class:`Outcomes` turns a receipt or a provider's exception into a :class:`DeliveryResult`
(the exception's class alone decides: sent, retrying on the schedule, failed, dead, a dead
address, a held configuration error, or skipped ``expired`` when the retry would come too
late); :class:`ResultWriter` commits them in batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from herald.domain import audience
from herald.domain.errors import (
    DeadAddressError,
    DeliveryError,
    HeraldError,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import (
    Attempt,
    Delivery,
    DeliveryResult,
    DeliveryStatus,
    Outcome,
    Reason,
    SendReceipt,
)
from herald.domain.validation import mask
from herald.ports import Clock, ResultsStore
from herald.services.catalog import Catalog

log = structlog.get_logger("herald.deliver")

S = DeliveryStatus


class ResultWriter:
    """Group commit of delivery results: whatever finished since the last commit goes in one."""

    def __init__(
        self, store: ResultsStore, clock: Clock, on_recorded: Callable[[DeliveryResult, bool], None]
    ) -> None:
        self.store = store
        self.clock = clock
        self._pending: list[tuple[DeliveryResult, asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._on_recorded = on_recorded
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="herald-result-writer")

    async def submit(self, result: DeliveryResult) -> bool:
        """Queue ``result``; return once committed (True) or refused for a lost lease (False)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((result, fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:500], self._pending[500:]
                try:
                    rejected = set(
                        await self.store.record_results([r for r, _ in batch], now=self.clock.now())
                    )
                except HeraldError as exc:
                    # Keep them: the lease will expire and the delivery be retried if we cannot
                    # write at all, but a passing outage must not drop finished sends.
                    log.error("deliver.record_failed", error=exc.detail, results=len(batch))
                    self._pending = batch + self._pending
                    await asyncio.sleep(0.5)
                    continue
                for r, fut in batch:
                    ok = r.delivery_id not in rejected
                    self._on_recorded(r, ok)
                    if not fut.done():
                        fut.set_result(ok)
            if self._closing:
                return

    @property
    def closed(self) -> bool:
        return self._closing

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task


def classify(exc: BaseException) -> tuple[Outcome, str | None, str, float | None, bool]:
    """(outcome, code, detail, retry_after, ambiguous) for an exception from a provider."""
    if isinstance(exc, DeliveryError):
        outcome = {
            "transient": Outcome.TRANSIENT,
            "permanent": Outcome.PERMANENT,
            "dead_address": Outcome.DEAD_ADDRESS,
            "config_error": Outcome.CONFIG_ERROR,
        }[exc.outcome]
        return outcome, exc.code, exc.detail, exc.retry_after, exc.ambiguous
    if isinstance(exc, TimeoutError):
        return Outcome.TRANSIENT, "timeout", "provider timed out", None, True
    if isinstance(exc, OSError):
        return Outcome.TRANSIENT, type(exc).__name__, f"connection error: {exc}", None, False
    return Outcome.TRANSIENT, type(exc).__name__, f"unexpected error: {exc}", None, True


class DeliveryObserver:
    """Hooks for metrics and alerts; the default does nothing."""

    def recorded(self, result: DeliveryResult, applied: bool) -> None:
        if not applied:
            log.warning(
                "delivery.result_refused",
                delivery_id=result.delivery_id,
                detail="lease lost before the result was recorded",
            )

    def config_error(self, channel: str, provider: str, detail: str) -> None:
        return None


class Outcomes:
    """Results of send attempts, for the sender ``owner`` (its leases)."""

    def __init__(self, owner: str, clock: Clock, catalog: Catalog, observer: DeliveryObserver) -> None:
        self.owner = owner
        self.clock = clock
        self.catalog = catalog
        self.observer = observer
        # Providers whose last outcome was a configuration error, until one of their sends succeeds.
        self.unhealthy: dict[str, dict[str, object]] = {}

    def expired(self, d: Delivery, now: float) -> DeliveryResult:
        """Skipped ``expired`` at the claim: its expires_at came before it could be sent."""
        return DeliveryResult(
            delivery_id=d.id,
            lease_owner=self.owner,
            new_status=S.SKIPPED,
            reason=Reason.EXPIRED.value,
            channel=d.channel,
            notification_id=d.notification_id,
            attempt=Attempt(
                n=d.attempts_made + 1,
                at=now,
                provider="-",
                outcome=Outcome.EXPIRED,
                detail="expired before sending",
            ),
            counts_against_budget=False,
        )

    def sent(
        self, d: Delivery, provider: str, receipt: SendReceipt, latency: float, *, quiet: bool = False
    ) -> DeliveryResult:
        n = d.attempts_made + 1
        at = self.clock.now()
        used = receipt.provider or provider
        self.unhealthy.pop(used, None)
        if not quiet:  # a batch logs once for all of its deliveries
            log.info(
                "delivery.sent",
                delivery_id=d.id,
                channel=d.channel,
                provider=used,
                code=receipt.code,
                latency_ms=round(latency, 2),
            )
        return DeliveryResult(
            delivery_id=d.id,
            lease_owner=self.owner,
            new_status=S.SENT,
            channel=d.channel,
            attempt=Attempt(
                n=n,
                at=at,
                provider=used,
                outcome=Outcome.OK,
                code=receipt.code,
                detail=receipt.detail,
                latency_ms=round(latency, 3),
            ),
            provider_message_id=receipt.provider_message_id,
        )

    def failure(self, d: Delivery, n: int, provider: str, exc: Exception, latency: float) -> DeliveryResult:
        outcome, code, detail, retry_after, ambiguous = classify(exc)
        now = self.clock.now()
        attempt = Attempt(
            n=n,
            at=now,
            provider=provider,
            outcome=outcome,
            code=code,
            detail=detail,
            latency_ms=round(latency, 3),
            ambiguous=ambiguous,
        )

        def result(
            status: DeliveryStatus,
            reason: str | None,
            *,
            due_at: float | None = None,
            dead: str | None = None,
            counts: bool = True,
        ) -> DeliveryResult:
            return DeliveryResult(
                delivery_id=d.id,
                lease_owner=self.owner,
                attempt=attempt,
                channel=d.channel,
                new_status=status,
                reason=reason,
                due_at=due_at,
                dead_address=dead,
                counts_against_budget=counts,
                notification_id=d.notification_id,
                fallback=bool((d.content.get("_meta") or {}).get("fallback")),
            )

        ctx = {
            "delivery_id": d.id,
            "channel": d.channel,
            "provider": provider,
            "code": code,
            "address": mask(d.address),
        }
        if isinstance(exc, DeadAddressError):
            log.warning("delivery.dead_address", **ctx, detail=detail)
            return result(S.FAILED, reason=Reason.INVALID_ADDRESS.value, dead=d.address)
        if isinstance(exc, PermanentDeliveryError):
            log.warning("delivery.failed", **ctx, detail=detail)
            # A refused destination (SSRF guard) says so; other permanent errors are generic.
            reason = Reason.BLOCKED_ADDRESS if code == Reason.BLOCKED_ADDRESS else Reason.PERMANENT_ERROR
            return result(S.FAILED, reason=reason.value)
        if isinstance(exc, ProviderConfigError):
            # Never the user's fault: hold the delivery without spending its retry budget.
            log.error("provider.config_error", **ctx, detail=detail)
            self.observer.config_error(d.channel, provider, detail)
            self.unhealthy[provider] = {
                "channel": d.channel,
                "reason": "config_error",
                "detail": detail,
                "since": now,
            }
            hold = max(self.catalog.config_hold_seconds, retry_after or 0.0)
            return result(
                S.RETRYING,
                reason=Reason.PROVIDER_CONFIG_ERROR.value,
                due_at=now + hold,
                counts=False,
            )
        if not isinstance(exc, TransientDeliveryError):
            log.warning("delivery.unexpected_error", **ctx, error=repr(exc))
        delay = self.catalog.retry.next_delay(d.budget_used + 1, retry_after=retry_after)
        if delay is None:
            log.error("delivery.dead", **ctx, attempts=n, detail=detail)
            return result(S.DEAD, reason=Reason.RETRIES_EXHAUSTED.value)
        if audience.expired(d.expires_at, now + delay):  # the retry would come too late
            return result(S.SKIPPED, reason=Reason.EXPIRED.value)
        log.info("delivery.retrying", **ctx, attempt=n, delay_s=round(delay, 3), detail=detail)
        return result(S.RETRYING, reason=Reason.TRANSIENT.value, due_at=now + delay)


__all__ = ["DeliveryObserver", "Outcomes", "ResultWriter", "classify"]
