"""What every ``herald`` command shares: one-line errors, the --config option, settings.

This module and the command modules import nothing heavy at the top: ``herald --help`` loads
typer and herald's own command definitions only; each command imports what it uses (the web
framework, the database driver, provider SDKs) when it runs. ``tests/unit/test_cli_imports.py``
holds that budget.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from herald.domain.errors import HeraldError

if TYPE_CHECKING:
    from herald.bootstrap import Container
    from herald.config import Settings
    from herald.entrypoints.service_layer import AdminServices

T = TypeVar("T")
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML file (default ./herald.toml)")]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except HeraldError as exc:
            where = f" ({exc.field})" if exc.field else ""
            raise fail(f"{exc.detail}{where}") from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper


def load(config: Path | None, *, logs: bool = True, **overrides: Any) -> Settings:
    """The settings (ConfigurationError names the key), with logging configured from them
    (``logs=False``: a short command that logs nothing need not load structlog)."""
    from herald import config_source  # noqa: PLC0415 - commands import what they use
    from herald.config import settings_from  # noqa: PLC0415

    source = config_source.read_source(config)
    settings = settings_from(source, **overrides)
    if not overrides:  # what validated is the file and the environment alone
        config_source.record(source, settings.database.url)
    if logs:
        from herald.logs import configure  # noqa: PLC0415

        configure(settings.logging.level, json=settings.logging.json_logs)
    return settings


def with_container(settings: Settings, fn: Callable[[Container], Awaitable[T]]) -> T:
    """Build every adapter and service (as a server does), run ``fn``, stop them."""
    import asyncio  # noqa: PLC0415

    from herald.bootstrap import build  # noqa: PLC0415

    async def main() -> T:
        container = await build(settings)
        try:
            return await fn(container)
        finally:
            await container.stop()

    return asyncio.run(main())


def with_admin(
    settings: Settings, fn: Callable[[AdminServices], Awaitable[T]], *, pool_size: int | None = None
) -> T:
    """Only the database (migrated to the newest schema) and the services over it: what admin
    commands need (entrypoints/service_layer.py)."""
    from herald.entrypoints import service_layer  # noqa: PLC0415

    return service_layer.with_admin(settings, fn, pool_size=pool_size)
