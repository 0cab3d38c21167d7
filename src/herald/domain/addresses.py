"""Where each channel finds a user's address: the one map the router and the store share."""

from __future__ import annotations

from collections.abc import Sequence

from herald.domain.models import Channel, Device, User

# Channels whose address is a field of the user (the same name as the ``users`` column), and
# so can be put on the suppression list by address. Push addresses are device tokens (a dead
# one deactivates its device), in-app's is the user itself, chat's a URL in ``user.chat``.
ADDRESS_FIELDS: dict[str, str] = {
    Channel.EMAIL.value: "email",
    Channel.SMS.value: "phone",
    Channel.WEBHOOK.value: "webhook_url",
}


def address_for(channel: str, user: User, devices: Sequence[Device]) -> str | None:
    """The address ``channel`` sends ``user`` to (``devices``: the user's active devices,
    oldest first), or None when the user has none for it."""
    field = ADDRESS_FIELDS.get(channel)
    if field is not None:
        value: str | None = getattr(user, field)
        return value
    if channel == Channel.PUSH:
        return devices[-1].token if devices else None
    if channel == Channel.IN_APP:
        return user.id
    if channel == Channel.CHAT:
        url = user.chat.get("url")
        return str(url) if url else None
    return None
