"""Recipients: profiles, devices, preferences, end-user tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response

from herald.domain.audience import Source, channel_choice
from herald.domain.models import Preferences
from herald.entrypoints.api.deps import (
    Caller,
    CallerDep,
    ContainerDep,
    ServicesDep,
    check_user_access,
    require,
)
from herald.entrypoints.api.schemas import DeviceBody, PreferencesBody, TokenBody, UserBody
from herald.entrypoints.api.views import device_view, iso, user_view

router = APIRouter(tags=["users"])


@router.put("/v1/users/{user_id}")
async def put_user(
    user_id: str, body: UserBody, s: ServicesDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    return user_view(await s.directory.put_user(user_id, body))


@router.get("/v1/users/{user_id}")
async def get_user(user_id: str, s: ServicesDep, who: CallerDep) -> dict[str, Any]:
    check_user_access(who, user_id)
    user, devices = await s.directory.user_with_devices(user_id)
    out = user_view(user)
    out["devices"] = [device_view(d) for d in devices]
    return out


@router.delete("/v1/users/{user_id}", status_code=204)
async def delete_user(user_id: str, s: ServicesDep, who: Annotated[Caller, require("admin")]) -> Response:
    await s.directory.delete_user(user_id)  # a send from this process to this user is refused at once
    return Response(status_code=204)


@router.post("/v1/users/{user_id}/devices", status_code=201)
async def add_device(user_id: str, body: DeviceBody, s: ServicesDep, who: CallerDep) -> dict[str, Any]:
    check_user_access(who, user_id, "send")
    return device_view(await s.directory.add_device(user_id, body))


@router.delete("/v1/users/{user_id}/devices/{device_id}", status_code=204)
async def remove_device(user_id: str, device_id: str, s: ServicesDep, who: CallerDep) -> Response:
    check_user_access(who, user_id, "send")
    await s.directory.remove_device(user_id, device_id)
    return Response(status_code=204)


_SOURCES = {
    Source.REQUIRED: "category (cannot opt out)",
    Source.CATEGORY: "user",
    Source.CHANNEL: "user channel setting",
    Source.DEFAULT: "default",
}


def _effective(c: ContainerDep, prefs: Preferences | None) -> dict[str, Any]:
    stored = prefs or Preferences(user_id="")
    channels = {
        ch: {
            "enabled": stored.channels.get(ch, True),
            "source": "user" if ch in stored.channels else "default",
        }
        for ch in sorted(c.catalog.enabled_channels)
    }
    categories: dict[str, Any] = {}
    for name, cat in sorted(c.catalog.categories.items()):
        per: dict[str, Any] = {}
        for ch in sorted(c.catalog.enabled_channels):
            choice = channel_choice(stored, cat, ch)  # the router's own rule
            per[ch] = {"enabled": choice.enabled, "source": _SOURCES[choice.source]}
        categories[name] = per
    return {
        "channels": channels,
        "categories": categories,
        "quiet_hours": {"value": stored.quiet_hours, "source": "user" if stored.quiet_hours else "default"},
        "digests": {
            name: {
                "value": stored.digests.get(name, "off"),
                "source": "user" if name in stored.digests else "default",
            }
            for name, cat in sorted(c.catalog.categories.items())
            if cat.digest
        },
    }


@router.get("/v1/users/{user_id}/preferences")
async def get_preferences(user_id: str, c: ContainerDep, s: ServicesDep, who: CallerDep) -> dict[str, Any]:
    check_user_access(who, user_id)
    return {"user_id": user_id, **_effective(c, await s.directory.preferences(user_id))}


@router.put("/v1/users/{user_id}/preferences")
async def put_preferences(
    user_id: str, body: PreferencesBody, c: ContainerDep, s: ServicesDep, who: CallerDep
) -> dict[str, Any]:
    check_user_access(who, user_id, "send")
    prefs = await s.directory.put_preferences(user_id, body)
    return {"user_id": user_id, **_effective(c, prefs)}


@router.post("/v1/users/{user_id}/token")
async def user_token(
    user_id: str,
    c: ContainerDep,
    s: ServicesDep,
    who: Annotated[Caller, require("send")],
    body: TokenBody | None = None,
) -> dict[str, Any]:
    await s.directory.require_user(user_id)
    ttl = body.ttl_seconds if body is not None and body.ttl_seconds is not None else c.user_tokens.ttl
    token, expires = c.user_tokens.issue(user_id, c.clock.now(), ttl)
    return {"token": token, "expires_at": iso(expires), "ttl_seconds": ttl}


# Unsubscribe links (GET: a confirmation page; POST: RFC 8058 one-click): entrypoints/web/pages.py
