"""Which backends a test's herald runs on: ``embedded`` (SQLite, in-process cache, the ``sql``
queue) or ``scaleout`` (PostgreSQL, Redis, RabbitMQ).

Test modules that must hold on both opt in with ``pytestmark = pytest.mark.usefixtures("stack")``;
the ``stack`` fixture (tests/conftest.py) runs each of their tests once per stack, and
:func:`tests.support.herald.make_settings`, :func:`tests.support.process.write_config` and
:func:`tests.support.process.db_query` follow the current one. The tests themselves do not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED = "embedded"
SCALEOUT = "scaleout"


@dataclass
class Stack:
    name: str = EMBEDDED
    pg_schema: str | None = None  # scaleout: this test's PostgreSQL schema
    queue_prefix: str | None = None  # scaleout: this test's RabbitMQ names

    def database_url(self, tmp: Path) -> str:
        if self.pg_schema is None:
            return f"sqlite:///{tmp / 'herald.db'}"
        from tests.contract.conftest import pg_url_for

        return pg_url_for(self.pg_schema)

    def overrides(self) -> dict[str, Any]:
        """Configuration sections for this stack (empty for embedded: the defaults)."""
        if self.name == EMBEDDED:
            return {}
        from tests.contract.conftest import REDIS_URL
        from tests.support.rabbitmq import RABBITMQ_URL

        return {
            "cache": {"url": REDIS_URL, "prefix": f"{self.queue_prefix}:"},
            "queue": {"url": RABBITMQ_URL, "prefix": self.queue_prefix},
        }

    def toml(self) -> str:
        """The same overrides as TOML tables, for a herald started from a file."""
        lines: list[str] = []
        for section, values in self.overrides().items():
            lines.append(f"[{section}]")
            lines += [f'{k} = "{v}"' for k, v in values.items()]
        return "\n".join(lines)


CURRENT = Stack()
