"""The events role of the store: routing rules (event type → notification) and the records of
received events. Every method is one transaction."""

from __future__ import annotations

from typing import Protocol

from herald.domain.models import EventRecord
from herald.domain.rules import Rule


class EventStore(Protocol):
    """Routing rules by event type, and the events herald received (written with the
    notifications they made, by :meth:`herald.ports.store.AcceptStore.create_notifications`)."""

    async def put_rule(self, rule: Rule, *, now: float) -> None:
        """Create or replace the rule of ``rule.event_type`` (one upsert; its creation time is
        kept). Processes that cache rules forget theirs themselves."""
        ...

    async def get_rule(self, event_type: str) -> Rule | None:
        """The rule for ``event_type`` (None: no rule)."""
        ...

    async def list_rules(self) -> list[Rule]:
        """Every rule, by event type."""
        ...

    async def delete_rule(self, event_type: str) -> bool:
        """Delete the rule for ``event_type``; False when there was none."""
        ...

    async def get_event(self, event_id: str) -> EventRecord | None:
        """The record of a received event: its body, source, what became of it (status,
        reason) and the notification it made (None: no such event)."""
        ...
