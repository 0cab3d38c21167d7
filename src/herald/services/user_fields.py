"""A user's fields, devices and preferences: the one set of checks for every way in.

The request bodies below are the API's (``PUT /v1/users/{id}``, ``POST .../devices``, ``PUT
.../preferences``: entrypoints/api/schemas.py exposes them under these names) and the parts of
one object of a batch or a file import (services/user_import.py extends :class:`UserBody`), so
a field is checked the same way whichever door it comes through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from herald.domain.errors import ValidationError
from herald.domain.models import ALL_CHANNELS, Category, Device, Preferences, User, new_id
from herald.domain.quiet_hours import check_digest_schedule
from herald.domain.validation import check_id, check_locale, check_timezone, normalize_email, normalize_phone

CHANNELS = frozenset(c.value for c in ALL_CHANNELS)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserBody(_Body):
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=32)
    locale: str | None = Field(default=None, max_length=35)
    timezone: str | None = Field(default=None, max_length=64)
    data: dict[str, Any] = Field(default_factory=dict)
    webhook_url: str | None = Field(default=None, max_length=2048)
    chat: dict[str, Any] = Field(default_factory=dict)


class DeviceBody(_Body):
    kind: Literal["apns", "fcm", "webpush"]
    token: str = Field(min_length=1, max_length=4096)
    data: dict[str, Any] = Field(default_factory=dict)


class QuietHours(_Body):
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")


class PreferencesBody(_Body):
    channels: dict[str, bool] = Field(default_factory=dict)
    categories: dict[str, dict[str, bool]] = Field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    digests: dict[str, str] = Field(default_factory=dict)


def check_url(url: str, field: str) -> str:
    if not url.startswith(("https://", "http://")):
        raise ValidationError(f"{field} must be an http(s) URL", field=field)
    return url


def user_from_body(user_id: str, body: UserBody, now: float, *, id_field: str = "user_id") -> User:
    """The user ``body`` describes, its fields checked and normalised (ValidationError names the
    field; ``id_field``: the id's name where it came from, the path or the object)."""
    return User(
        id=check_id(user_id, id_field),
        email=normalize_email(body.email) if body.email else None,
        phone=normalize_phone(body.phone) if body.phone else None,
        locale=check_locale(body.locale) if body.locale else None,
        timezone=check_timezone(body.timezone) if body.timezone else None,
        data=body.data,
        webhook_url=check_url(body.webhook_url, "webhook_url") if body.webhook_url else None,
        chat=body.chat,
        updated_at=now,
    )


def device_from_body(user_id: str, body: DeviceBody, now: float) -> Device:
    return Device(
        id=new_id("dev"), user_id=user_id, kind=body.kind, token=body.token, data=body.data, created_at=now
    )


def check_preferences(user_id: str, body: PreferencesBody, categories: Mapping[str, Category]) -> Preferences:
    """The preferences ``body`` sets, every part checked before any is kept (ValidationError
    names the field, relative to the body)."""
    for ch in body.channels:
        if ch not in CHANNELS:
            raise ValidationError(f"unknown channel {ch!r}", field=f"channels.{ch}")
    for cat, chans in body.categories.items():
        if cat not in categories:
            raise ValidationError(f"unknown category {cat!r}", field=f"categories.{cat}")
        for ch in chans:
            if ch not in CHANNELS:
                raise ValidationError(f"unknown channel {ch!r}", field=f"categories.{cat}.{ch}")
    digests: dict[str, str] = {}
    for cat, schedule in body.digests.items():
        category = categories.get(cat)
        if category is None:
            raise ValidationError(f"unknown category {cat!r}", field=f"digests.{cat}")
        try:
            digests[cat] = check_digest_schedule(schedule)
        except ValueError as exc:
            raise ValidationError(str(exc), field=f"digests.{cat}") from None
        if digests[cat] != "off" and not category.digest:
            raise ValidationError(f"category {cat!r} cannot be digested", field=f"digests.{cat}")
    return Preferences(
        user_id=user_id,
        channels=dict(body.channels),
        categories={k: dict(v) for k, v in body.categories.items()},
        quiet_hours=body.quiet_hours.model_dump() if body.quiet_hours else None,
        digests=digests,
    )
