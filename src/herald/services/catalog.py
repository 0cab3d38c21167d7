"""What the services need to know of the configuration, as plain values (no config import)."""

from __future__ import annotations

from dataclasses import dataclass, field

from herald.domain.errors import ValidationError
from herald.domain.models import Category
from herald.domain.policies import RetrySchedule


@dataclass(slots=True)
class Catalog:
    categories: dict[str, Category]
    default_category: str
    enabled_channels: frozenset[str]
    retry: RetrySchedule = field(default_factory=RetrySchedule)
    default_locale: str = "en"
    idempotency_ttl: float = 86_400.0
    public_url: str = "http://127.0.0.1:8025"
    config_hold_seconds: float = 60.0
    dedup_window: float = 86_400.0

    def category(self, name: str | None, field_name: str = "category") -> Category:
        key = name or self.default_category
        cat = self.categories.get(key)
        if cat is None:
            known = ", ".join(sorted(self.categories))
            raise ValidationError(f"unknown category {key!r}; configured: {known}", field=field_name)
        return cat
