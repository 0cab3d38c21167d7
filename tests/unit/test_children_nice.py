"""``[server] worker_nice``: unset, the children of ``herald serve`` yield the cores on
PostgreSQL and not on SQLite (why: ``Settings.children_nice``); set, it is what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from herald.config import load_settings
from herald.domain.errors import ConfigurationError

_PG = "postgresql://herald@127.0.0.1:5432/herald"


def _settings(tmp_path: Path, body: str) -> int:
    cfg = tmp_path / "herald.toml"
    cfg.write_text(body)
    return load_settings(cfg).children_nice


def test_unset_it_depends_on_the_database(tmp_path: Path) -> None:
    assert _settings(tmp_path, "") == 0  # SQLite, the default database
    assert _settings(tmp_path, f'[database]\nurl = "{_PG}"\n') == 10
    assert _settings(tmp_path, f'[database]\nurl = "{_PG.replace("postgresql", "postgres")}"\n') == 10


def test_a_value_given_wins_on_either_database(tmp_path: Path) -> None:
    assert _settings(tmp_path, "[server]\nworker_nice = 7\n") == 7
    assert _settings(tmp_path, f'[server]\nworker_nice = 0\n[database]\nurl = "{_PG}"\n') == 0


@pytest.mark.parametrize("value", ["25", "-1", '"low"'])
def test_a_bad_value_fails_naming_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"server\.worker_nice"):
        _settings(tmp_path, f"[server]\nworker_nice = {value}\n")
