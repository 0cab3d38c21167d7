"""Ops alerts: deliveries going dead and provider configuration errors.

Always an error-level log event; optionally a JSON summary POSTed to ``[alerts] webhook_url``,
at most one per (kind, channel) per ``min_interval_seconds`` — further events in the interval are
counted and reported in the next summary, never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import structlog

from herald.domain.models import DeliveryResult, DeliveryStatus
from herald.services.deliver import DeliveryObserver

log = structlog.get_logger("herald.alerts")


class OpsAlerter(DeliveryObserver):
    def __init__(self, webhook_url: str | None, *, min_interval: float = 60.0, timeout: float = 10.0) -> None:
        self.webhook_url = webhook_url
        self.min_interval = min_interval
        self.timeout = timeout
        self._last: dict[tuple[str, str], float] = {}
        self._pending: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.sent: int = 0

    def recorded(self, result: DeliveryResult, applied: bool) -> None:
        if applied and result.new_status == DeliveryStatus.DEAD:
            log.error(
                "alert.delivery_dead",
                delivery_id=result.delivery_id,
                channel=result.channel,
                provider=result.attempt.provider,
                reason=result.reason,
                attempts=result.attempt.n,
            )
            self._event(
                "delivery_dead",
                result.channel,
                {
                    "delivery_id": result.delivery_id,
                    "provider": result.attempt.provider,
                    "reason": result.reason,
                    "attempts": result.attempt.n,
                    "last_code": result.attempt.code,
                    "last_detail": result.attempt.detail,
                },
            )

    def config_error(self, channel: str, provider: str, detail: str) -> None:
        self._event("provider_config_error", channel, {"provider": provider, "detail": detail})

    def _event(self, kind: str, channel: str, item: dict[str, Any]) -> None:
        if not self.webhook_url:
            return
        key = (kind, channel)
        self._pending.setdefault(key, []).append(item)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.min_interval:
            return  # the summary at the end of the interval carries it
        self._last[key] = now
        self._spawn(self._flush(key, delay=0.0))

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, key: tuple[str, str], delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        items = self._pending.pop(key, [])
        if not items:
            return
        kind, channel = key
        body = {
            "alert": kind,
            "channel": channel,
            "count": len(items),
            "items": items[:20],
            "more": max(0, len(items) - 20),
            "at": time.time(),
        }
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            async with self._session.post(self.webhook_url or "", json=body) as resp:
                if resp.status >= 300:
                    log.warning("alert.webhook_refused", status=resp.status)
                else:
                    self.sent += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("alert.webhook_failed", error=str(exc))
        # Whatever arrived during the quiet interval goes out when it ends.
        self._spawn(self._flush_later(key))

    async def _flush_later(self, key: tuple[str, str]) -> None:
        await asyncio.sleep(self.min_interval)
        if self._pending.get(key):
            self._last[key] = time.monotonic()
            await self._flush(key, delay=0.0)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()


class Observers(DeliveryObserver):
    def __init__(self, *observers: DeliveryObserver) -> None:
        self.observers = observers

    def recorded(self, result: DeliveryResult, applied: bool) -> None:
        for o in self.observers:
            o.recorded(result, applied)

    def config_error(self, channel: str, provider: str, detail: str) -> None:
        for o in self.observers:
            o.config_error(channel, provider, detail)
