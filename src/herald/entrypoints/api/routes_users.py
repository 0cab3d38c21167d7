"""Recipients: profiles, devices, preferences, end-user tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response

from herald.domain.audience import Source, channel_choice
from herald.domain.errors import NotFound, ValidationError
from herald.domain.models import ALL_CHANNELS, Device, Preferences, User, new_id
from herald.domain.quiet_hours import check_digest_schedule
from herald.domain.validation import check_id, check_locale, check_timezone, normalize_email, normalize_phone
from herald.entrypoints.api.deps import Caller, CallerDep, ContainerDep, check_user_access, require
from herald.entrypoints.api.schemas import DeviceBody, PreferencesBody, TokenBody, UserBody
from herald.entrypoints.api.views import device_view, iso, user_view

router = APIRouter(tags=["users"])
_CHANNELS = {c.value for c in ALL_CHANNELS}


def _check_url(url: str, field: str) -> str:
    if not url.startswith(("https://", "http://")):
        raise ValidationError(f"{field} must be an http(s) URL", field=field)
    return url


@router.put("/v1/users/{user_id}")
async def put_user(
    user_id: str, body: UserBody, c: ContainerDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    user = User(
        id=check_id(user_id, "user_id"),
        email=normalize_email(body.email) if body.email else None,
        phone=normalize_phone(body.phone) if body.phone else None,
        locale=check_locale(body.locale) if body.locale else None,
        timezone=check_timezone(body.timezone) if body.timezone else None,
        data=body.data,
        webhook_url=_check_url(body.webhook_url, "webhook_url") if body.webhook_url else None,
        chat=body.chat,
        updated_at=c.clock.now(),
    )
    return user_view(await c.store.put_user(user))


@router.get("/v1/users/{user_id}")
async def get_user(user_id: str, c: ContainerDep, who: CallerDep) -> dict[str, Any]:
    check_user_access(who, user_id)
    user = await c.store.get_user(user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    out = user_view(user)
    out["devices"] = [device_view(d) for d in await c.store.list_devices([user_id], active_only=False)]
    return out


@router.delete("/v1/users/{user_id}", status_code=204)
async def delete_user(user_id: str, c: ContainerDep, who: Annotated[Caller, require("admin")]) -> Response:
    deleted = await c.store.delete_user(user_id)
    c.lookups.forget_user(user_id)  # a send from this process to this user is refused at once
    if not deleted:
        raise NotFound(f"user {user_id} does not exist")
    return Response(status_code=204)


@router.post("/v1/users/{user_id}/devices", status_code=201)
async def add_device(user_id: str, body: DeviceBody, c: ContainerDep, who: CallerDep) -> dict[str, Any]:
    check_user_access(who, user_id, "send")
    if await c.store.get_user(user_id) is None:
        raise NotFound(f"user {user_id} does not exist")
    device = Device(
        id=new_id("dev"),
        user_id=user_id,
        kind=body.kind,
        token=body.token,
        data=body.data,
        created_at=c.clock.now(),
    )
    return device_view(await c.store.add_device(device))


@router.delete("/v1/users/{user_id}/devices/{device_id}", status_code=204)
async def remove_device(user_id: str, device_id: str, c: ContainerDep, who: CallerDep) -> Response:
    check_user_access(who, user_id, "send")
    if not await c.store.remove_device(user_id, device_id):
        raise NotFound(f"device {device_id} does not exist")
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
async def get_preferences(user_id: str, c: ContainerDep, who: CallerDep) -> dict[str, Any]:
    check_user_access(who, user_id)
    if await c.store.get_user(user_id) is None:
        raise NotFound(f"user {user_id} does not exist")
    return {"user_id": user_id, **_effective(c, await c.store.get_preferences(user_id))}


@router.put("/v1/users/{user_id}/preferences")
async def put_preferences(
    user_id: str, body: PreferencesBody, c: ContainerDep, who: CallerDep
) -> dict[str, Any]:
    check_user_access(who, user_id, "send")
    if await c.store.get_user(user_id) is None:
        raise NotFound(f"user {user_id} does not exist")
    for ch in body.channels:
        if ch not in _CHANNELS:
            raise ValidationError(f"unknown channel {ch!r}", field=f"channels.{ch}")
    for cat, chans in body.categories.items():
        if cat not in c.catalog.categories:
            raise ValidationError(f"unknown category {cat!r}", field=f"categories.{cat}")
        for ch in chans:
            if ch not in _CHANNELS:
                raise ValidationError(f"unknown channel {ch!r}", field=f"categories.{cat}.{ch}")
    digests: dict[str, str] = {}
    for cat, schedule in body.digests.items():
        category = c.catalog.categories.get(cat)
        if category is None:
            raise ValidationError(f"unknown category {cat!r}", field=f"digests.{cat}")
        try:
            digests[cat] = check_digest_schedule(schedule)
        except ValueError as exc:
            raise ValidationError(str(exc), field=f"digests.{cat}") from None
        if digests[cat] != "off" and not category.digest:
            raise ValidationError(f"category {cat!r} cannot be digested", field=f"digests.{cat}")
    # Everything is checked before anything is stored.
    prefs = Preferences(
        user_id=user_id,
        channels=body.channels,
        categories=body.categories,
        quiet_hours=body.quiet_hours.model_dump() if body.quiet_hours else None,
        digests=digests,
    )
    await c.store.put_preferences(prefs)
    return {"user_id": user_id, **_effective(c, prefs)}


@router.post("/v1/users/{user_id}/token")
async def user_token(
    user_id: str, c: ContainerDep, who: Annotated[Caller, require("send")], body: TokenBody | None = None
) -> dict[str, Any]:
    if await c.store.get_user(user_id) is None:
        raise NotFound(f"user {user_id} does not exist")
    ttl = body.ttl_seconds if body is not None and body.ttl_seconds is not None else c.user_tokens.ttl
    token, expires = c.user_tokens.issue(user_id, c.clock.now(), ttl)
    return {"token": token, "expires_at": iso(expires), "ttl_seconds": ttl}


# Unsubscribe links (GET: a confirmation page; POST: RFC 8058 one-click): entrypoints/web/pages.py
