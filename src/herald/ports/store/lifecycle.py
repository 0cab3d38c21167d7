"""The store's own lifecycle: connecting, checking it answers, closing."""

from __future__ import annotations

from typing import Protocol


class StoreLifecycle(Protocol):
    """Start and stop the store; ask whether it answers (the health check)."""

    async def start(self) -> None:
        """Connect and make sure the schema is current.

        Migrates to the newest revision when needed; processes starting together take turns
        (one migrates, the others then find the schema current)."""
        ...

    async def close(self) -> None:
        """Close every connection. The store is not used after this."""
        ...

    async def ping(self) -> None:
        """Raise ServiceUnavailable when the backend cannot answer."""
        ...
