"""The ``console`` provider: records each delivery as one JSON line and logs it.

The default for development and tests: nothing leaves the machine, everything is visible.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import structlog

from herald.domain.models import OutboundMessage, SendReceipt
from herald.domain.validation import mask

log = structlog.get_logger("herald.providers.console")


class ConsoleProvider:
    name = "console"

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = asyncio.Lock()

    async def send(self, message: OutboundMessage) -> SendReceipt:
        record = {
            "at": time.time(),
            "delivery_id": message.delivery_id,
            "notification_id": message.notification_id,
            "user_id": message.user_id,
            "channel": message.channel,
            "address": message.address,
            "category": message.category,
            "priority": message.priority.value,
            "attempt": message.attempt,
            "content": {k: v for k, v in message.content.items() if k != "_meta"},
        }
        if self.path is not None:
            line = orjson.dumps(record) + b"\n"
            async with self._lock:
                # One small append; a thread hop would cost more than the write itself.
                with self.path.open("ab") as fh:
                    fh.write(line)
        log.info(
            "console.delivered",
            delivery_id=message.delivery_id,
            channel=message.channel,
            address=mask(message.address),
        )
        return SendReceipt(code="recorded", provider_message_id=message.delivery_id)

    async def close(self) -> None:
        return None
