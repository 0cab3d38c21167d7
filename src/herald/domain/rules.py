"""Routing rules: what an event type becomes.

A rule names the template, category, priority and channels of the notification an event turns
into. Channels go out either all at once (``channels``) or as a fallback chain (``fallback``:
the first channel the user can be reached on; the next one when that one has no address, is
opted out or fails permanently). Optional ``conditions`` on the event's data decide whether the
event notifies anyone at all; a false condition is recorded with the reason, never dropped
silently.

Conditions are data, not code: ``{"field": "data.amount", "op": "gt", "value": 100}``. Nothing
an API caller writes here is evaluated as an expression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from herald.domain.errors import ValidationError
from herald.domain.models import ALL_CHANNELS, JSON, Priority

CHANNEL_NAMES = frozenset(c.value for c in ALL_CHANNELS)
OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "not_exists", "contains")
_ALIASES = {"==": "eq", "!=": "ne", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}
_RULE_FIELDS = frozenset(
    {"template", "category", "priority", "channels", "fallback", "conditions", "description"}
)
_CONDITION_FIELDS = frozenset({"field", "op", "value"})
MAX_CONDITIONS = 20
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Condition:
    field: str  # a dotted path into the event: data.amount, data.customer.tier
    op: str
    value: Any = None

    def describe(self) -> str:
        if self.op in ("exists", "not_exists"):
            return f"{self.field} {self.op}"
        return f"{self.field} {self.op} {self.value!r}"

    def as_json(self) -> JSON:
        out: JSON = {"field": self.field, "op": self.op}
        if self.op not in ("exists", "not_exists"):
            out["value"] = self.value
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    event_type: str
    template: str
    channels: tuple[str, ...]
    fallback: bool = False
    category: str | None = None
    priority: Priority | None = None
    conditions: tuple[Condition, ...] = field(default_factory=tuple)
    description: str | None = None
    source: str = "api"

    def as_json(self) -> JSON:
        out: JSON = {"template": self.template}
        out["fallback" if self.fallback else "channels"] = list(self.channels)
        if self.category is not None:
            out["category"] = self.category
        if self.priority is not None:
            out["priority"] = self.priority.value
        if self.conditions:
            out["conditions"] = [c.as_json() for c in self.conditions]
        if self.description is not None:
            out["description"] = self.description
        return out


def _channel_list(raw: Any, name: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValidationError(f"{name} must be a non-empty list of channels", field=name)
    for i, ch in enumerate(raw):
        if not isinstance(ch, str) or ch not in CHANNEL_NAMES:
            raise ValidationError(
                f"{name}[{i}]: unknown channel {ch!r}; channels are {', '.join(sorted(CHANNEL_NAMES))}",
                field=f"{name}[{i}]",
            )
    if len(set(raw)) != len(raw):
        raise ValidationError(f"{name} names a channel twice", field=name)
    return tuple(raw)


def _condition(raw: Any, name: str) -> Condition:
    if not isinstance(raw, dict):
        raise ValidationError(f"{name} must be an object with field, op and value", field=name)
    unknown = set(raw) - _CONDITION_FIELDS
    if unknown:
        raise ValidationError(f"{name} has unknown keys {sorted(unknown)}", field=name)
    path = raw.get("field")
    if not isinstance(path, str) or not path.startswith("data.") or len(path) > 200:
        raise ValidationError(
            f"{name}.field must be a path into the event data, like data.amount", field=f"{name}.field"
        )
    parts = path.split(".")
    if any(not p for p in parts):
        raise ValidationError(f"{name}.field {path!r} has an empty segment", field=f"{name}.field")
    op = raw.get("op")
    op = _ALIASES.get(op, op) if isinstance(op, str) else op
    if op not in OPS:
        raise ValidationError(f"{name}.op must be one of {', '.join(OPS)}", field=f"{name}.op")
    value = raw.get("value", _MISSING)
    if op in ("exists", "not_exists"):
        if value is not _MISSING:
            raise ValidationError(f"{name}.value is not used with {op}", field=f"{name}.value")
        return Condition(path, op)
    if value is _MISSING:
        raise ValidationError(f"{name}.value is required with {op}", field=f"{name}.value")
    if op in ("gt", "gte", "lt", "lte") and not (
        (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value))
        or isinstance(value, str)
    ):
        raise ValidationError(f"{name}.value must be a number or a string for {op}", field=f"{name}.value")
    if op in ("in", "not_in") and not isinstance(value, list):
        raise ValidationError(f"{name}.value must be a list for {op}", field=f"{name}.value")
    return Condition(path, op, value)


def parse_rule(event_type: str, raw: Any, *, source: str = "api", prefix: str = "") -> Rule:
    """Validate a rule body; every error names the offending field (with ``prefix``)."""
    if not isinstance(raw, dict):
        raise ValidationError("a rule must be a JSON object", field=prefix.rstrip(".") or None)
    try:
        return _parse(event_type, raw, source)
    except ValidationError as exc:
        if prefix and exc.field:
            raise ValidationError(f"{prefix}{exc.detail}", field=prefix + exc.field) from None
        raise


def _parse(event_type: str, raw: JSON, source: str) -> Rule:
    unknown = set(raw) - _RULE_FIELDS
    if unknown:
        raise ValidationError(f"unknown rule fields {sorted(unknown)}", field=sorted(unknown)[0])
    template = raw.get("template")
    if not isinstance(template, str) or not template:
        raise ValidationError("template is required (the template's name)", field="template")
    has_channels, has_fallback = raw.get("channels") is not None, raw.get("fallback") is not None
    if has_channels == has_fallback:
        raise ValidationError(
            "give either channels (all at once) or fallback (a chain, first reachable channel)",
            field="channels",
        )
    channels = _channel_list(
        raw["fallback"] if has_fallback else raw["channels"], "fallback" if has_fallback else "channels"
    )
    category = raw.get("category")
    if category is not None and (not isinstance(category, str) or not category):
        raise ValidationError("category must be a category name", field="category")
    priority: Priority | None = None
    if raw.get("priority") is not None:
        try:
            priority = Priority(raw["priority"])
        except ValueError:
            raise ValidationError(
                "priority must be one of critical, high, normal, low", field="priority"
            ) from None
    conds_raw = raw.get("conditions") or []
    if not isinstance(conds_raw, list):
        raise ValidationError("conditions must be a list", field="conditions")
    if len(conds_raw) > MAX_CONDITIONS:
        raise ValidationError(f"at most {MAX_CONDITIONS} conditions", field="conditions")
    conditions = tuple(_condition(c, f"conditions[{i}]") for i, c in enumerate(conds_raw))
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise ValidationError("description must be a string", field="description")
    return Rule(
        event_type=event_type,
        template=template,
        channels=channels,
        fallback=has_fallback,
        category=category,
        priority=priority,
        conditions=conditions,
        description=description,
        source=source,
    )


def lookup(event: JSON, path: str) -> Any:
    """The value at a dotted path, or a sentinel when any segment is missing."""
    value: Any = event
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _comparable(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, numbers) and isinstance(b, numbers)) or (isinstance(a, str) and isinstance(b, str))


def _holds(cond: Condition, actual: Any) -> bool:
    if cond.op == "exists":
        return actual is not _MISSING
    if cond.op == "not_exists":
        return actual is _MISSING
    if actual is _MISSING:
        return cond.op in ("ne", "not_in")
    if cond.op == "eq":
        return bool(actual == cond.value)
    if cond.op == "ne":
        return bool(actual != cond.value)
    if cond.op == "in":
        return actual in cond.value
    if cond.op == "not_in":
        return actual not in cond.value
    if cond.op == "contains":
        if isinstance(actual, str) and isinstance(cond.value, str):
            return cond.value in actual
        return isinstance(actual, list) and cond.value in actual
    if not _comparable(actual, cond.value):
        return False
    if cond.op == "gt":
        return bool(actual > cond.value)
    if cond.op == "gte":
        return bool(actual >= cond.value)
    if cond.op == "lt":
        return bool(actual < cond.value)
    return bool(actual <= cond.value)


def evaluate(conditions: tuple[Condition, ...], data: JSON) -> str | None:
    """None when every condition holds; otherwise why the first one does not."""
    event = {"data": data}
    for cond in conditions:
        actual = lookup(event, cond.field)
        if not _holds(cond, actual):
            shown = "missing" if actual is _MISSING else repr(actual)
            return f"condition {cond.describe()} is false ({cond.field} is {shown})"
    return None
