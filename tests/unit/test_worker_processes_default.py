"""``[server] worker_processes`` unset: ``herald serve`` sends from children picked from the cores
it may run on (issue 23): none on a single core; on SQLite one core fewer (the serve process is
the other one), at most 3; on PostgreSQL one per core, at most 16. A value given (the file or the
environment) always wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from herald import config
from herald.config import load_settings
from herald.domain.errors import ConfigurationError

_PG = "postgresql://herald@127.0.0.1:5432/herald"


def _children(tmp_path: Path, body: str) -> int:
    cfg = tmp_path / "herald.toml"
    cfg.write_text(body)
    return load_settings(cfg).serve_worker_processes


@pytest.mark.parametrize(
    ("cores", "sqlite", "postgres"), [(1, 0, 0), (2, 1, 2), (3, 2, 3), (4, 3, 4), (8, 3, 8), (64, 3, 16)]
)
def test_unset_it_follows_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int, sqlite: int, postgres: int
) -> None:
    monkeypatch.setattr(config, "available_cores", lambda: cores)
    assert _children(tmp_path, "") == sqlite
    assert _children(tmp_path, f'[database]\nurl = "{_PG}"\n') == postgres


def test_a_value_given_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "available_cores", lambda: 8)
    assert _children(tmp_path, "[server]\nworker_processes = 0\n") == 0
    assert _children(tmp_path, f'[server]\nworker_processes = 1\n[database]\nurl = "{_PG}"\n') == 1
    monkeypatch.setenv("HERALD_SERVER__WORKER_PROCESSES", "3")
    assert _children(tmp_path, "") == 3


def test_the_cores_are_those_this_process_may_use() -> None:
    assert config.available_cores() >= 1


@pytest.mark.parametrize("value", ["-1", "33", '"many"'])
def test_a_bad_value_fails_naming_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"server\.worker_processes"):
        _children(tmp_path, f"[server]\nworker_processes = {value}\n")
