"""The CLI starts at once: ``herald --help`` loads no web framework, database driver or provider
SDK, and the admin commands load no web framework or provider SDK (issue 23: the module used to
import the whole application, 1.0-1.4 s before a command could run).

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


def loaded_by(args: list[str], cwd: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("HERALD_")},
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
    assert [m for m in modules if m.startswith(HEAVY_HERALD)] == []


def test_keys_create_loads_the_database_only(tmp_path: Path) -> None:
    first = loaded_by(["keys", "create", "--scope", "admin"], tmp_path)
    assert (tmp_path / "herald.db").exists()  # it did create the key, in a new database
    assert "sqlalchemy" in first  # whose schema the full path created
    assert offending(first, WEB) == []
    assert offending(first, PROVIDER_SDKS) == []
    # Not the composition root, the API, nor alembic once the schema is current.
    assert "herald.bootstrap" not in first and "herald.entrypoints.api.app" not in first
    # With the schema current, the one row goes through the plain driver: no SQLAlchemy either.
    second = loaded_by(["keys", "create", "--scope", "send"], tmp_path)
    assert "herald.adapters.store.keys_fast" in second  # the probe ran the direct path
    assert offending(second, WEB) == []
    assert offending(second, DATABASE) == []
    assert offending(second, PROVIDER_SDKS) == []
    assert "herald.bootstrap" not in second and "herald.adapters.store.sql" not in second
    with contextlib.closing(sqlite3.connect(tmp_path / "herald.db")) as db:
        assert sorted(r[0] for r in db.execute("SELECT scopes FROM api_keys")) == ["admin", "send"]
