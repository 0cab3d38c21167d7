"""The CLI starts at once: ``herald --help`` loads no web framework, database driver, provider
SDK or pydantic, and the admin commands load no web framework or provider SDK (issue 23: the
module used to import the whole application, 1.0-1.4 s before a command could run). ``herald
keys create`` with a configuration that validated before loads no database library and no
pydantic either (the validated-configuration marker, herald/config_source.py).

The budget is asserted on what is imported (in a fresh interpreter), never on time."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

WEB = ("fastapi", "starlette", "uvicorn", "httptools", "uvloop", "websockets")
DATABASE = ("sqlalchemy", "psycopg", "aiosqlite", "asyncpg", "alembic", "redis", "aio_pika", "aiokafka")
PROVIDER_SDKS = ("botocore", "boto3", "apprise", "httpx", "h2", "aiohttp", "aiosmtplib", "jwt", "http_ece")
VALIDATION = ("pydantic",)  # and pydantic_core, pydantic_settings (prefixes)
HEAVY_HERALD = ("herald.bootstrap", "herald.entrypoints.api", "herald.adapters")

PROBE = """
import json, sys
sys.argv = ["herald", *json.loads(sys.argv[1])]
from herald.entrypoints.cli import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("\\n@@" + json.dumps(sorted(sys.modules)) + "\\n")
"""


def loaded_by(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> set[str]:
    """The modules ``herald ARGS`` loaded, run in ``cwd`` (its marker of validated
    configurations there too, never the user's)."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("HERALD_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "XDG_CACHE_HOME": str(cwd / "cache"), **(env or {})},
    )
    marker = done.stderr.rindex("@@")
    return set(json.loads(done.stderr[marker + 2 :]))


def offending(modules: set[str], families: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in families or m.startswith(families))


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["keys", "--help"], ["users", "import", "--help"]]
)
def test_help_and_version_load_no_framework_driver_or_sdk(tmp_path: Path, args: list[str]) -> None:
    modules = loaded_by(args, tmp_path)
    assert "herald.entrypoints.cli" in modules  # the probe ran the real command
    assert offending(modules, WEB) == []
    assert offending(modules, DATABASE) == []
    assert offending(modules, PROVIDER_SDKS) == []
    assert offending(modules, VALIDATION) == [] and "herald.config" not in modules
    assert [m for m in modules if m.startswith(HEAVY_HERALD)] == []


def test_keys_create_loads_the_database_only(tmp_path: Path) -> None:
    first = loaded_by(["keys", "create", "--scope", "admin"], tmp_path)
    assert (tmp_path / "herald.db").exists()  # it did create the key, in a new database
    assert "sqlalchemy" in first  # whose schema the full path created
    assert "pydantic_settings" in first  # after validating the configuration in full
    assert offending(first, WEB) == []
    assert offending(first, PROVIDER_SDKS) == []
    # Not the composition root, the API, nor alembic once the schema is current.
    assert "herald.bootstrap" not in first and "herald.entrypoints.api.app" not in first
    # With the schema current, the one row goes through the plain driver: no SQLAlchemy either;
    # and the configuration validated the time before, unchanged: no pydantic.
    second = loaded_by(["keys", "create", "--scope", "send"], tmp_path)
    assert "herald.adapters.store.keys_fast" in second  # the probe ran the direct path
    assert offending(second, WEB) == []
    assert offending(second, DATABASE) == []
    assert offending(second, PROVIDER_SDKS) == []
    assert offending(second, VALIDATION) == [] and "herald.config" not in second
    assert "herald.bootstrap" not in second and "herald.adapters.store.sql" not in second
    assert "herald.ports" not in second  # the key service's module, not every port's protocol
    assert "herald.domain.models" not in second  # the key's type and id alone (domain/keys.py, ids.py)
    with contextlib.closing(sqlite3.connect(tmp_path / "herald.db")) as db:
        assert sorted(r[0] for r in db.execute("SELECT scopes FROM api_keys")) == ["admin", "send"]


@pytest.mark.parametrize(
    ("change", "env"),
    [
        ("file", {}),
        ("environment", {"HERALD_LOGGING__LEVEL": "debug"}),
        ("database url", {"HERALD_DATABASE__URL": "sqlite:///other.db"}),
    ],
)
def test_keys_create_validates_again_a_changed_configuration(
    tmp_path: Path, change: str, env: dict[str, str]
) -> None:
    config = tmp_path / "herald.toml"
    config.write_text('[database]\nurl = "sqlite:///herald.db"\n', encoding="utf-8")
    loaded_by(["keys", "create", "--scope", "admin"], tmp_path)
    assert offending(loaded_by(["keys", "create", "--scope", "admin"], tmp_path), VALIDATION) == []  # a hit
    if change == "file":
        config.write_text(config.read_text(encoding="utf-8") + "[server]\nport = 8026\n", encoding="utf-8")
    again = loaded_by(["keys", "create", "--scope", "admin"], tmp_path, env)
    assert "pydantic_settings" in again and "herald.config" in again
