"""Request bodies. Responses are built as plain dicts by the routes (see views.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# A user's fields, devices and preferences: one set of checks for the API, batches and imports.
from herald.services.user_fields import DeviceBody, PreferencesBody, QuietHours, UserBody


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _iso_only(value: Any) -> Any:
    """Times in filters are ISO 8601 (as the OpenAPI document says), not bare numbers that
    pydantic would otherwise read as epoch seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z")
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only)]


class SendBody(_Body):
    to: str | list[str | dict[str, Any]] | dict[str, Any]
    template: str | None = Field(default=None, max_length=128)
    content: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    channels: list[str] | None = Field(default=None, max_length=6)
    category: str | None = Field(default=None, max_length=64)
    priority: Literal["critical", "high", "normal", "low"] | None = None
    send_at: datetime | None = None
    expires_at: datetime | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    dedup_key: str | None = Field(default=None, max_length=255)
    fallback: bool = False  # channels form a chain: the first reachable, the next on permanent failure


class BatchBody(_Body):
    notifications: list[dict[str, Any]] = Field(min_length=1, max_length=1000)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


class TemplateBody(_Body):
    category: str | None = Field(default=None, max_length=64)
    channels: dict[str, dict[str, Any]] = Field(min_length=1)
    locales: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    default_locale: str = Field(default="en", max_length=35)
    # Rendered once at PUT (as preview data): a template over its render budget, or failing
    # with this data, is refused with a 422 rather than failing sends. Not stored.
    sample_data: dict[str, Any] | None = None


class RenderBody(_Body):
    channel: str | None = None
    locale: str | None = Field(default=None, max_length=35)
    data: dict[str, Any] = Field(default_factory=dict)
    user: dict[str, Any] | None = None
    user_id: str | None = None


class TrackBody(_Body):
    event: Literal["delivered", "read", "opened", "clicked"]
    url: str | None = Field(default=None, max_length=2048)  # clicked: the link followed


MIN_TOKEN_TTL, MAX_TOKEN_TTL = 60, 86_400 * 30


class TokenBody(_Body):
    # Out of range is a 422 naming the bounds (never silently clamped: the caller would hand an
    # end user a token that lives longer, or shorter, than it asked for).
    ttl_seconds: int | None = Field(default=None, ge=MIN_TOKEN_TTL, le=MAX_TOKEN_TTL, strict=True)


class ReplayFilterBody(_Body):
    channel: str | None = None
    provider: str | None = None
    reason: str | None = None
    code: str | None = Field(default=None, max_length=64)
    since: IsoDatetime | None = None
    until: IsoDatetime | None = None
    limit: int = Field(default=1000, ge=1, le=10_000)


__all__ = [
    "MAX_TOKEN_TTL",
    "MIN_TOKEN_TTL",
    "BatchBody",
    "DeviceBody",
    "IsoDatetime",
    "PreferencesBody",
    "QuietHours",
    "RenderBody",
    "ReplayFilterBody",
    "SendBody",
    "TemplateBody",
    "TokenBody",
    "TrackBody",
    "UserBody",
    "_Body",
    "epoch",
]
