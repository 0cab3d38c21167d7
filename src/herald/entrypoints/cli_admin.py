"""``herald keys …``, ``herald db upgrade`` and ``herald bench``."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from herald.entrypoints.cli_common import ConfigOpt, fail, guarded, load, with_admin

if TYPE_CHECKING:
    from herald.domain.models import ApiKey
    from herald.entrypoints.service_layer import AdminServices

keys_app = typer.Typer(no_args_is_help=True, help="API keys")
db_app = typer.Typer(no_args_is_help=True, help="Database schema")


def _when(value: float | None) -> str:
    if value is None:
        return "never"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@keys_app.command("create")
@guarded
def keys_create(
    scope: Annotated[list[str], typer.Option("--scope", help="admin, send or read (repeatable)")],
    name: Annotated[str, typer.Option(help="a label for the key")] = "default",
    config: ConfigOpt = None,
) -> None:
    """Create an API key and print it alone on stdout (it is stored hashed: keep it)."""
    from herald.services.api_keys import SCOPES, generate_key, hash_key  # noqa: PLC0415

    bad = [s for s in scope if s not in SCOPES]
    if bad or not scope:
        raise fail(f"--scope must be one of {', '.join(SCOPES)}")
    if not name.strip() or len(name) > 200:
        raise fail("--name must be 1-200 characters")
    from herald.config_source import validated_database_url  # noqa: PLC0415
    from herald.store_root import create_api_key_directly  # noqa: PLC0415

    # A configuration that validated before, unchanged (file, environment, code), need not be
    # validated again to read its database.url: no pydantic to load (config_source.py).
    url = validated_database_url(config)
    settings = None
    if url is None:
        settings = load(config, logs=False)
        url = settings.database.url
    raw, key = generate_key(name, set(scope), time.time())
    # The one row through the plain driver when the schema is current (no SQLAlchemy to load);
    # else the key service over the store, which creates or migrates the schema first.
    if create_api_key_directly(url, key, hash_key(raw)):
        typer.echo(raw)
        return
    if settings is None:
        settings = load(config, logs=False)

    async def run(s: AdminServices) -> str:
        return await s.api_keys.create(name, set(scope))

    typer.echo(with_admin(settings, run))


@keys_app.command("list")
@guarded
def keys_list(
    revoked: Annotated[bool, typer.Option("--revoked", help="also show revoked keys")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    config: ConfigOpt = None,
) -> None:
    """List API keys: id, name, scopes, created, last used (never the secret, which herald
    does not keep). Last use is recorded to the minute."""
    settings = load(config, logs=False)

    async def run(s: AdminServices) -> list[ApiKey]:
        return await s.api_keys.keys(include_revoked=revoked)

    keys = with_admin(settings, run)
    if as_json:
        for k in keys:
            typer.echo(
                json.dumps(
                    {
                        "id": k.id,
                        "name": k.name,
                        "scopes": sorted(k.scopes),
                        "created_at": _when(k.created_at),
                        "last_used_at": None if k.last_used_at is None else _when(k.last_used_at),
                        "revoked_at": None if k.revoked_at is None else _when(k.revoked_at),
                    }
                )
            )
        return
    header = ["ID", "NAME", "SCOPES", "CREATED", "LAST USED"] + (["REVOKED"] if revoked else [])
    rows = [
        [k.id, k.name, ",".join(sorted(k.scopes)), _when(k.created_at), _when(k.last_used_at)]
        + ([_when(k.revoked_at) if k.revoked_at is not None else "-"] if revoked else [])
        for k in keys
    ]
    if not rows:
        typer.echo("no API keys (create one with: herald keys create --scope admin)", err=True)
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


@keys_app.command("revoke")
@guarded
def keys_revoke(
    keys: Annotated[list[str], typer.Argument(help="key ids (key_…), or a name that only one live key has")],
    config: ConfigOpt = None,
) -> None:
    """Revoke API keys. Running herald processes refuse a revoked key within 30 seconds (the
    time they cache a key)."""
    settings = load(config, logs=False)

    async def run(s: AdminServices) -> list[ApiKey]:
        return await s.api_keys.revoke(keys)

    for k in with_admin(settings, run):
        typer.echo(f"revoked {k.id} ({k.name})")


@db_app.command("upgrade")
@guarded
def db_upgrade(config: ConfigOpt = None) -> None:
    """Create or migrate the database schema to the newest revision, and say which it did."""
    from herald.store_root import open_database  # noqa: PLC0415

    settings = load(config, logs=False)
    db = open_database(settings.database.url)
    try:
        before = db.current_revision()
        db.upgrade()
        after = db.current_revision()
    finally:
        db.dispose()
    where = db.display_url
    if before is None:
        typer.echo(f"{where}: created the schema (revision {after})")
    elif before == after:
        typer.echo(f"{where}: already at the newest revision ({after}); nothing to do")
    else:
        typer.echo(f"{where}: migrated from revision {before} to {after}")


def _checkout() -> Path | None:
    """A source checkout holding the benchmark harness: the current folder or herald's own."""
    import herald  # noqa: PLC0415

    for root in (Path.cwd(), Path(herald.__file__).resolve().parents[2]):
        if (root / "bench" / "__main__.py").is_file() and (root / "tests" / "emulators").is_dir():
            return root
    return None


@guarded
def bench(ctx: typer.Context) -> None:
    """Run the benchmark harness (python -m bench): SCENARIO [--quick] [options]; --help for its
    options. Needs herald's source checkout (bench/ and tests/emulators/)."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    root = _checkout()
    if root is None:
        raise fail(
            "herald bench runs the benchmark harness of a source checkout (bench/ and tests/emulators/): "
            "run it inside a clone of herald"
        )
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("openapi_core") is None:
        raise fail(
            "herald bench needs the bench extra (its provider emulators check requests with "
            "openapi-core): scripts/bootstrap-venv bench, or pip install -e '.[bench]'"
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    args = list(ctx.args) or ["--help"]
    code = subprocess.call([sys.executable, "-m", "bench", *args], cwd=root, env=env)  # noqa: S603
    raise typer.Exit(code)
