"""Provider batches for the delivery pools (services/deliver.py): which claimed deliveries share
one provider call. See ``herald.ports.BatchProvider`` and the module docstring of deliver.py."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from herald.domain.models import Delivery, OutboundMessage
from herald.ports import BatchProvider

if TYPE_CHECKING:
    from herald.services.deliver import ChannelPool

MAX_BATCH_CLAIM = 1000  # deliveries one claim takes while a broadcast is batched


def batcher(pool: ChannelPool) -> BatchProvider | None:
    provider = pool.providers[0] if len(pool.providers) == 1 else None
    return provider if isinstance(provider, BatchProvider) else None


def groups(
    provider: BatchProvider, claimed: Sequence[Delivery]
) -> tuple[list[Delivery], list[list[Delivery]]]:
    """Split a claim into single sends and provider batches: deliveries of one notification,
    lane and attempt number whose messages share the provider's ``batch_key``, at most its
    ``batch_limit`` per batch (groups of one stay single sends)."""
    by_notification: dict[tuple[str, int, int], list[Delivery]] = {}
    for d in claimed:
        by_notification.setdefault((d.notification_id, d.priority.rank, d.attempts_made), []).append(d)
    singles: list[Delivery] = []
    groups: list[list[Delivery]] = []
    step = max(1, provider.batch_limit)
    for together in by_notification.values():
        if len(together) == 1:  # the common case (one recipient each): no key to compute
            singles.append(together[0])
            continue
        by_key: dict[Hashable, list[Delivery]] = {}
        for d in together:
            key = provider.batch_key(_key_message(d))
            if key is None:
                singles.append(d)
            else:
                by_key.setdefault(key, []).append(d)
        for members in by_key.values():
            if len(members) == 1:
                singles.append(members[0])
            else:
                groups += [members[i : i + step] for i in range(0, len(members), step)]
    return singles, groups


def _key_message(d: Delivery) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=d.id,
        notification_id=d.notification_id,
        user_id=d.user_id,
        channel=d.channel,
        address=d.address or "",
        content=d.content,
        category=d.category,
        priority=d.priority,
        attempt=d.attempts_made + 1,
    )
