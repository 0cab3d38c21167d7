"""The service layer as the entrypoints see it. Route handlers, the browser faces and the CLI
call these services only, never the store nor an adapter (tests/unit/test_entrypoints_use_
services.py holds them to it).

:class:`Services` is built from a container (``herald serve``/``api``/``worker``, and the
commands that build one): the API and the pages get it per app (``deps.services``), a command
with :meth:`Services.of`. Admin commands that need only the database (``herald keys``,
``herald users import``) run with :func:`with_admin`, which builds no container. This module
is the one place in the entrypoints that holds a store: to hand it to the services, to start
and close it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from herald.services.api_keys import ApiKeyService
from herald.services.directory import Directory

if TYPE_CHECKING:
    from herald.bootstrap import Container
    from herald.config import Settings
    from herald.domain.models import Category
    from herald.services.dead_letters import DeadLetterService
    from herald.services.notifications import NotificationService
    from herald.services.routing_catalog import RoutingCatalog
    from herald.services.stats import StatsService

T = TypeVar("T")


@dataclass(slots=True)
class Services:
    dead_letters: DeadLetterService
    directory: Directory
    routing: RoutingCatalog  # templates and routing rules
    notifications: NotificationService
    stats: StatsService
    _container: Container

    @classmethod
    def of(cls, c: Container) -> Services:
        # Imported here: the admin commands import this module and need none of these.
        from herald.services.dead_letters import DeadLetterService  # noqa: PLC0415
        from herald.services.notifications import NotificationService  # noqa: PLC0415
        from herald.services.routing_catalog import RoutingCatalog  # noqa: PLC0415

        return cls(
            dead_letters=DeadLetterService(c.store, c.queue, c.clock),
            directory=Directory(c.store, c.clock, c.catalog.categories, forget_user=c.lookups.forget_user),
            routing=RoutingCatalog(c.store, c.clock, c.catalog, c.lookups, forget_rule=c.events.forget),
            notifications=NotificationService(c.store, c.clock),
            stats=c.stats,
            _container=c,
        )

    def built_from(self, c: Container) -> bool:
        return self._container is c

    async def metrics(
        self, *, circuits: Iterable[tuple[str, str, str]], held: Mapping[str, Mapping[str, object]]
    ) -> bytes:
        """The Prometheus exposition: the exporter reads its gauges from the store."""
        c = self._container
        return await c.metrics.render(
            c.store, c.broker_status(), now=c.clock.now(), circuits=circuits, held=held
        )


class WallClock:
    def now(self) -> float:
        return time.time()


@dataclass(slots=True)
class AdminServices:
    """What the admin commands call: API keys, and the directory (users in bulk)."""

    api_keys: ApiKeyService
    directory: Directory


def categories_of(settings: Settings) -> dict[str, Category]:
    """The configured categories: what the checks of a user object need (names, digests)."""
    from herald.domain.models import Category  # noqa: PLC0415

    return {
        name: Category(name=name, opt_out=c.opt_out, digest=c.digest)
        for name, c in settings.categories.items()
    }


def with_admin(
    settings: Settings, fn: Callable[[AdminServices], Awaitable[T]], *, pool_size: int | None = None
) -> T:
    """Only the database (migrated to the newest schema), with the services over it: run ``fn``."""
    import asyncio  # noqa: PLC0415

    from herald.store_root import build_store  # noqa: PLC0415 - not the whole composition root

    async def main() -> T:
        store = build_store(settings, pool_size=pool_size)
        await store.start()
        try:
            clock = WallClock()
            return await fn(
                AdminServices(ApiKeyService(store, clock), Directory(store, clock, categories_of(settings)))
            )
        finally:
            await store.close()

    return asyncio.run(main())
