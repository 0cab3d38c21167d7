"""Provider status callbacks: find the provider, let it verify and parse, apply what it says.

The provider's signature is the authentication: a forged or stale request is refused and
changes nothing. Parsing is the provider's (each speaks its own scheme, behind
:class:`herald.ports.CallbackReceiver`); applying is :class:`herald.services.track.TrackService`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from herald.domain.errors import NotFound
from herald.domain.models import CallbackRequest
from herald.ports import CallbackReceiver, Provider
from herald.services.track import TrackService

log = structlog.get_logger("herald.callbacks")


class CallbackService:
    def __init__(self, providers: Mapping[str, Provider], tracker: TrackService, *, public_base: str) -> None:
        self._providers = providers
        self._tracker = tracker
        self._public_base = public_base

    def receiver(self, name: str) -> CallbackReceiver:
        provider = self._providers.get(name)
        if provider is None:
            raise NotFound(f"provider {name!r} is not configured")
        if not isinstance(provider, CallbackReceiver):
            raise NotFound(f"no status callbacks for provider {name!r}")
        return provider

    async def receive(self, name: str, request: CallbackRequest) -> dict[str, Any]:
        """Verify, parse and apply one callback request; what it changed, per event."""
        events = self.receiver(name).parse_callback(request, public_base=self._public_base)
        outcomes = await self._tracker.apply_all(events)
        log.info("callbacks.received", provider=name, events=len(events))
        return {"received": len(events), "outcomes": outcomes}
