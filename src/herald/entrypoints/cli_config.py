"""``herald config reference`` and ``herald config check [FILE]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from herald.entrypoints.cli_common import fail, guarded

config_app = typer.Typer(no_args_is_help=True, help="Configuration: reference and checks")


@config_app.command("reference")
@guarded
def config_reference() -> None:
    """Print every setting (key, type, default, environment variable, description) as Markdown:
    herald config reference > docs/configuration.md"""
    from herald.entrypoints.config_reference import reference  # noqa: PLC0415

    typer.echo(reference(), nl=False)


@config_app.command("check")
@guarded
def config_check(
    file: Annotated[
        Path | None, typer.Argument(help="TOML file (default: HERALD_CONFIG, else ./herald.toml)")
    ] = None,
) -> None:
    """Validate a configuration file (and HERALD_* variables) without starting anything: every
    key, the providers each channel names, their settings and installed extras."""
    from herald import config_source  # noqa: PLC0415
    from herald.config import settings_from  # noqa: PLC0415

    if file is not None and not file.is_file():
        raise fail(f"configuration file {file} does not exist")
    source = config_source.read_source(file)
    chosen = source.path
    settings = settings_from(source)
    problems = check_providers(settings)
    if problems:
        for line in problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(1)
    config_source.record(source, settings.database.url)  # the next command need not validate it
    where = str(chosen) if chosen.is_file() else "no configuration file: the defaults"
    channels = ", ".join(
        f"{name} → {'/'.join(ch.providers)}" for name, ch in settings.channels.items() if ch.enabled
    )
    typer.echo(f"{where}: ok ({channels})")


def check_providers(settings: Any, *, unknown_tables: bool = True) -> list[str]:
    """What the start would refuse about providers, every problem at once (``unknown_tables``:
    also a [providers.NAME] table no provider reads, likely a typo)."""
    from pydantic import ValidationError  # noqa: PLC0415

    from herald.bootstrap import PROVIDER_MODULES, import_provider_module, smtp_config  # noqa: PLC0415
    from herald.domain.errors import ConfigurationError  # noqa: PLC0415

    builtin = {"console", "smtp", "in_app"}
    known = builtin | set(PROVIDER_MODULES)
    tables: dict[str, Any] = dict(settings.providers.model_extra or {})
    problems: list[str] = []
    used: set[str] = set()
    for channel, ch in settings.channels.items():
        for name in ch.providers:
            if name not in known:
                problems.append(
                    f"channels.{channel}.providers: unknown provider {name!r}; "
                    f"known: {', '.join(sorted(known))}"
                )
            elif ch.enabled:
                used.add(name)
    for name in sorted(set(tables) - known) if unknown_tables else ():
        problems.append(f"providers.{name}: unknown provider; known: {', '.join(sorted(known))}")
    if "smtp" in used or "smtp" in tables:  # built in: validated by the class beside its provider
        try:
            smtp_config(settings)
        except ConfigurationError as exc:
            problems.append(exc.detail)
    for name in sorted((used | set(tables)) & set(PROVIDER_MODULES)):
        raw = tables.get(name)
        if raw is None:
            problems.append(f"providers.{name}: a channel uses it but there is no [providers.{name}] table")
            continue
        if not isinstance(raw, dict):
            problems.append(f"providers.{name}: must be a table")
            continue
        try:
            module = import_provider_module(name)
        except ConfigurationError as exc:
            problems.append(exc.detail)
            continue
        config_cls = getattr(module, PROVIDER_MODULES[name][1])
        try:
            config_cls.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                key = ".".join(str(p) for p in err["loc"])
                problems.append(f"configuration key providers.{name}{'.' + key if key else ''}: {err['msg']}")
    return problems
