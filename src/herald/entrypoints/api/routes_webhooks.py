"""Provider status callbacks. The provider's signature is the authentication: a forged or
stale request is refused with 403 and changes nothing."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request

from herald.domain.errors import MalformedRequest, NotFound, PermissionDenied
from herald.domain.models import CallbackEvent
from herald.entrypoints.api.deps import ContainerDep

router = APIRouter(tags=["webhooks"])


def _provider(c: ContainerDep, name: str) -> Any:
    provider = c.providers.get(name)
    if provider is None:
        raise NotFound(f"provider {name!r} is not configured")
    return provider


async def _twilio(c: ContainerDep, request: Request) -> list[CallbackEvent]:
    from herald.adapters.providers.twilio import parse_twilio_callback  # noqa: PLC0415 - optional provider

    provider = _provider(c, "twilio")
    # Twilio posts application/x-www-form-urlencoded; the standard library parses it.
    try:
        params = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise MalformedRequest("the callback body is not UTF-8 form data") from None
    base = (provider.config.status_callback_base_url or c.settings.server.public_url).rstrip("/")
    url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if not provider.verify_callback(url, params, request.headers.get("x-twilio-signature", "")):
        raise PermissionDenied("the X-Twilio-Signature does not match this request")
    return [parse_twilio_callback(params, url=url)]


async def _sendgrid(c: ContainerDep, request: Request) -> list[CallbackEvent]:
    from herald.adapters.providers.sendgrid import parse_sendgrid_events  # noqa: PLC0415 - optional provider

    provider = _provider(c, "sendgrid")
    raw = await request.body()
    signature = request.headers.get("x-twilio-email-event-webhook-signature", "")
    timestamp = request.headers.get("x-twilio-email-event-webhook-timestamp", "")
    if not signature or not timestamp or not provider.verify_events(raw, signature, timestamp):
        raise PermissionDenied("the event webhook signature is missing, wrong or too old")
    try:
        return list(parse_sendgrid_events(raw))
    except ValueError as exc:
        raise MalformedRequest(f"not a SendGrid event batch: {exc}") from None


_HANDLERS = {"twilio": _twilio, "sendgrid": _sendgrid}


@router.post("/v1/webhooks/{provider}")
async def provider_callback(provider: str, request: Request, c: ContainerDep) -> dict[str, Any]:
    handler = _HANDLERS.get(provider)
    if handler is None:
        raise NotFound(f"no status callbacks for provider {provider!r}")
    events = await handler(c, request)
    outcomes = await c.tracker.apply_all(events)
    return {"received": len(events), "outcomes": outcomes}
