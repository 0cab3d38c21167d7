"""The digests role of the store.

A held item is a delivery with status ``scheduled`` and reason ``digest``; its ``due_at`` is the
digest time. ``promote_scheduled`` never queues one: only :meth:`DigestStore.save_digest` (or
:meth:`DigestStore.rehold_digest_items`) moves it. Every method is one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from herald.domain.models import Delivery
from herald.ports.records import DigestGroup, DigestPlan, DigestSaved


class DigestStore(Protocol):
    """Held items grouped per (user, category, channel), and the digests that replace them."""

    async def due_digest_groups(self, *, now: float, limit: int) -> list[DigestGroup]:
        """(user, category, channel) groups with held items due at ``now`` (oldest first).

        At most ``limit`` groups, ordered by their earliest due item; items already expired
        do not count."""
        ...

    async def held_digest_items(
        self, user_id: str, category: str, channel: str, *, now: float
    ) -> list[Delivery]:
        """The group's held items that are due and not expired, oldest first."""
        ...

    async def save_digest(self, plan: DigestPlan, *, now: float) -> DigestSaved:
        """In one transaction: insert the digest notification and delivery and mark every item
        ``skipped``/``digested``. ``changed`` (nothing written) when an item is no longer held
        (cancelled, expired or digested meanwhile); ``exists`` (nothing written) when the
        digest notification's id is already taken (that digest went out already).

        On ``saved`` each item's content becomes ``plan.item_contents``' (pointing to the
        digest), the digest delivery gets its outbox row when queued and the store feeds a
        broker, and the funnel counts the items digested. Concurrent runs over one group:
        one saves, the others get ``changed`` or ``exists``."""
        ...

    async def rehold_digest_items(
        self, delivery_ids: Sequence[str], *, due_at: float | None, now: float
    ) -> int:
        """Move still-held items to a later digest time, or (``due_at`` None) release them as
        ordinary scheduled deliveries due now. Returns how many changed."""
        ...
