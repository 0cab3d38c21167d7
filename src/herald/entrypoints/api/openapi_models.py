"""The shapes of herald's main answers, for the OpenAPI document (``openapi_doc.py``).

The routes build their answers with ``views.py``; these models describe the same shapes (a test
checks real answers against them). Extra fields are allowed: clients must accept new fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Problem(_Open):
    """An error, as RFC 9457 ``application/problem+json``."""

    type: str = Field(description="always about:blank: the status and title say what happened")
    title: str
    status: int
    detail: str = Field(description="what went wrong, for a person")
    instance: str | None = Field(default=None, description="the path of the request")
    field: str | None = Field(default=None, description="the request field at fault, when there is one")
    errors: list[dict[str, Any]] | None = Field(default=None, description="every invalid field (422)")


class Attempt(_Open):
    n: int
    at: str | None
    provider: str
    outcome: str
    code: str | None
    detail: str | None
    latency_ms: float | None
    ambiguous: bool


class Delivery(_Open):
    id: str
    notification_id: str
    user_id: str
    channel: str
    status: str
    reason: str | None
    priority: str
    category: str
    provider: str | None
    attempts: list[Attempt]
    attempt_count: int
    created_at: str | None
    sent_at: str | None
    delivered_at: str | None
    read_at: str | None
    failed_at: str | None
    next_attempt_at: str | None
    provider_message_id: str | None


class Notification(_Open):
    id: str
    status: str
    template: str | None
    template_version: int | None
    category: str
    priority: str
    channels: list[str] | None
    created_at: str | None
    send_at: str | None
    expires_at: str | None
    recipients_total: int
    recipients_routed: int
    topic: str | None
    event_type: str | None
    fallback: bool | None
    error: str | None
    summary: dict[str, int] | None = Field(default=None, description="deliveries per status")
    deliveries: list[Delivery] | None = None
    deliveries_next: str | None = Field(default=None, description="deliveries_after of the next page")


class NotificationList(_Open):
    items: list[Notification]
    next_cursor: str | None


class Accepted(_Open):
    id: str
    status: str
    recipients: int
    channels: list[str] | None
    category: str
    priority: str
    send_at: str | None


class Cancelled(_Open):
    id: str
    cancelled: int
    unchanged: int
    detail: str


class Template(_Open):
    name: str
    version: int
    category: str | None
    channels: dict[str, dict[str, Any]]
    locales: dict[str, dict[str, dict[str, Any]]]
    default_locale: str
    created_at: str | None


class User(_Open):
    id: str
    email: str | None
    phone: str | None
    locale: str | None
    timezone: str | None
    data: dict[str, Any]
    webhook_url: str | None
    chat: dict[str, Any]
    created_at: str | None
    updated_at: str | None


class DeadLetters(_Open):
    items: list[Delivery]
    next_cursor: str | None


class Replayed(_Open):
    replayed: int
    delivery: Delivery


class Health(_Open):
    status: str


# (method, path, status) -> the model of that answer (application/json).
TYPED: dict[tuple[str, str, str], type[BaseModel]] = {
    ("post", "/v1/notifications", "202"): Accepted,
    ("get", "/v1/notifications", "200"): NotificationList,
    ("get", "/v1/notifications/{notification_id}", "200"): Notification,
    ("post", "/v1/notifications/{notification_id}/cancel", "200"): Cancelled,
    ("put", "/v1/templates/{name}", "200"): Template,
    ("get", "/v1/templates/{name}", "200"): Template,
    ("put", "/v1/users/{user_id}", "200"): User,
    ("get", "/v1/users/{user_id}", "200"): User,
    ("get", "/v1/dead-letters", "200"): DeadLetters,
    ("post", "/v1/dead-letters/{delivery_id}/replay", "200"): Replayed,
    ("get", "/healthz", "200"): Health,
}
