"""The validated-configuration marker (herald/config_source.py): ``herald keys create`` reads
``database.url`` without pydantic only for a configuration that validated before, unchanged, with
the same environment; it resolves the URL as pydantic-settings does; the marker holds digests
only; a marker that cannot be written only costs the full validation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from herald import config_source
from herald.config import load_settings
from herald.domain.errors import ConfigurationError
from herald.entrypoints.cli_common import load


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No HERALD_* variable of the caller's; the marker in this test's folder; cwd there."""
    for name in list(os.environ):
        if name.upper().startswith("HERALD_"):
            monkeypatch.delenv(name)
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(tmp_path)
    yield cache


def _marker() -> Path:
    path = config_source.marker_path()
    assert path is not None
    return path


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "herald.toml"
    path.write_text(text, encoding="utf-8")
    return path


FILE_URL = "sqlite:///from-file.db"


@pytest.mark.parametrize(
    ("toml", "env"),
    [
        ("", {}),  # the default
        (f'[database]\nurl = "{FILE_URL}"\n', {}),  # the file
        (f'database = {{ url = "{FILE_URL}", pool_size = 3 }}\n', {}),  # an inline table
        ("[database]\npool_size = 3\n", {}),  # the file without url: the default
        ("", {"HERALD_DATABASE__URL": "sqlite:///from-env.db"}),  # the environment
        (f'[database]\nurl = "{FILE_URL}"\n', {"HERALD_DATABASE__URL": "sqlite:///from-env.db"}),
        (f'[database]\nurl = "{FILE_URL}"\n', {"herald_database__url": "sqlite:///lower.db"}),
        (f'[database]\nurl = "{FILE_URL}"\n', {"Herald_Database__Url": "sqlite:///mixed.db"}),
        (f'[database]\nurl = "{FILE_URL}"\n', {"HERALD_DATABASE": '{"url": "sqlite:///json.db"}'}),
        (f'[database]\nurl = "{FILE_URL}"\n', {"HERALD_DATABASE": '{"pool_size": 2}'}),
        (
            "",
            {
                "HERALD_DATABASE": '{"url": "sqlite:///json.db"}',
                "HERALD_DATABASE__URL": "sqlite:///nested.db",
            },
        ),
        (f'[database]\nurl = "{FILE_URL}"\n', {"HERALD_DATABASE__POOL_SIZE": "4"}),  # other keys
        (f'[database]\r\nurl = "{FILE_URL}"\r\n', {}),  # Windows newlines
    ],
)
def test_database_url_resolves_as_pydantic_settings_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, env: dict[str, str]
) -> None:
    if toml:
        _write(tmp_path, toml)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = load_settings().database.url
    assert config_source.database_url(config_source.read_source()) == expected


def test_a_configuration_that_validated_is_known_until_its_file_changes(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[database]\nurl = "{FILE_URL}"\n')
    assert config_source.validated_database_url(path) is None  # never validated
    load(path, logs=False)
    assert config_source.validated_database_url(path) == FILE_URL  # the hit
    assert config_source.validated_database_url(None) == FILE_URL  # ./herald.toml is the same file
    path.write_text(f'[database]\nurl = "{FILE_URL}"\n[server]\nport = 8026\n', encoding="utf-8")
    assert config_source.validated_database_url(path) is None  # changed: validate again
    load(path, logs=False)
    assert config_source.validated_database_url(path) == FILE_URL


def test_another_environment_is_another_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, f'[database]\nurl = "{FILE_URL}"\n')
    load(path, logs=False)
    monkeypatch.setenv("HERALD_LOGGING__LEVEL", "debug")  # any HERALD_* variable, not only the URL's
    assert config_source.validated_database_url(path) is None
    monkeypatch.delenv("HERALD_LOGGING__LEVEL")
    assert config_source.validated_database_url(path) == FILE_URL
    monkeypatch.setenv("HERALD_DATABASE__URL", "sqlite:///other.db")
    assert config_source.validated_database_url(path) is None


def test_no_file_is_a_configuration_too_and_a_named_missing_file_is_not(tmp_path: Path) -> None:
    load(None, logs=False)  # the defaults
    assert config_source.validated_database_url(None) == "sqlite:///herald.db"
    assert config_source.validated_database_url(tmp_path / "missing.toml") is None
    _write(tmp_path, "")  # ./herald.toml appears, empty: another input
    assert config_source.validated_database_url(None) is None


def test_a_url_resolved_otherwise_than_the_validation_misses(tmp_path: Path) -> None:
    """The digest binds the URL the validation gave: a reader that resolved another one (a
    precedence rule it does not know) misses instead of using it."""
    path = _write(tmp_path, f'[database]\nurl = "{FILE_URL}"\n')
    source = config_source.read_source(path)
    config_source.record(source, "sqlite:///what-pydantic-said.db")
    assert config_source.validated_database_url(path) is None


def test_an_invalid_configuration_is_never_recorded(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[database]\nurl = "{FILE_URL}"\n[server]\nport = "x"\n')
    with pytest.raises(ConfigurationError):
        load(path, logs=False)
    assert not _marker().exists()
    assert config_source.validated_database_url(path) is None


def test_the_marker_holds_digests_never_a_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = ["db-password-1f2e", "auth-secret-9a8b", "smtp-password-7c6d", "env-token-5e4f"]
    path = _write(
        tmp_path,
        f'[database]\nurl = "sqlite:///{secrets[0]}.db"\n[auth]\nsecret = "{secrets[1]}"\n'
        f'[providers.smtp]\nhost = "localhost"\npassword = "{secrets[2]}"\n',
    )
    monkeypatch.setenv("HERALD_ALERTS__WEBHOOK_URL", f"https://hooks.example/{secrets[3]}")
    load(path, logs=False)
    marker = _marker()
    text = marker.read_text(encoding="ascii")
    assert not any(s in text for s in secrets)
    assert str(tmp_path) not in text and "sqlite" not in text
    entries = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(entries) == 1 and re.fullmatch(r"[0-9a-f]{64}", entries[0])
    if os.name == "posix":
        assert marker.stat().st_mode & 0o077 == 0  # the user's alone
        assert marker.parent.stat().st_mode & 0o077 == 0


def test_the_marker_keeps_the_newest_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_source, "_KEEP", 3)
    path = _write(tmp_path, "")
    for port in range(8030, 8035):
        path.write_text(f"[server]\nport = {port}\n", encoding="utf-8")
        load(path, logs=False)
    lines = [x for x in _marker().read_text(encoding="ascii").splitlines() if not x.startswith("#")]
    assert len(lines) == 3
    assert config_source.validated_database_url(path) == "sqlite:///herald.db"  # the newest is kept


@pytest.mark.parametrize("how", ["a file where the folder goes", "a read-only folder", "no home"])
def test_a_marker_that_cannot_be_written_only_costs_the_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    path = _write(tmp_path, f'[database]\nurl = "{FILE_URL}"\n')
    if how == "a file where the folder goes":
        (tmp_path / "blocked").write_text("", encoding="utf-8")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "blocked"))
    elif how == "a read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        (tmp_path / "ro").mkdir(mode=0o500)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ro"))
    else:
        monkeypatch.delenv("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", "relative")  # no usable home folder
    assert load(path, logs=False).database.url == FILE_URL  # no error
    assert config_source.validated_database_url(path) is None


# The command itself, in a fresh interpreter: which path it took shows in what it imported.
PROBE = """
import json, sys
sys.argv = ["herald", *json.loads(sys.argv[1])]
from herald.entrypoints.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
sys.stderr.write("\\n@@" + json.dumps({"code": code, "pydantic": "pydantic" in sys.modules}) + "\\n")
"""


def _herald(
    cwd: Path, args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python <args>`` in ``cwd`` with the suite's ``HERALD_*`` variables replaced by ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("HERALD_")}
    whole = {**base, **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=whole
    )


def _keys_create(cwd: Path, env: dict[str, str] | None = None) -> tuple[int, bool, str, str]:
    done = _herald(cwd, ["-c", PROBE, json.dumps(["keys", "create", "--scope", "admin"])], env)
    err, _, tail = done.stderr.rpartition("\n@@")
    result = json.loads(tail)
    return result["code"], result["pydantic"], done.stdout.strip(), err.strip()


def test_keys_create_validates_in_full_unless_the_marker_knows_the_configuration(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[database]\nurl = "sqlite:///{tmp_path / "h.db"}"\n')
    code, pydantic, key, _ = _keys_create(tmp_path)  # a new database: the full path
    assert (code, pydantic) == (0, True) and key.startswith("hk_")
    code, pydantic, key, _ = _keys_create(tmp_path)  # the hit
    assert (code, pydantic) == (0, False) and key.startswith("hk_")
    code, pydantic, _, _ = _keys_create(tmp_path, {"HERALD_LOGGING__LEVEL": "debug"})  # env changed
    assert (code, pydantic) == (0, True)
    path.write_text(path.read_text(encoding="utf-8") + "[server]\nport = 8026\n", encoding="utf-8")
    code, pydantic, _, _ = _keys_create(tmp_path)  # file changed
    assert (code, pydantic) == (0, True)


@pytest.mark.parametrize(
    ("change", "env", "message"),
    [
        ('[server]\nport = "x"\n', {}, "error: configuration key server.port:"),
        ("[surprise]\nkey = 1\n", {}, "error: configuration key surprise:"),
        ("", {"HERALD_SERVER__PORT": "70000"}, "error: configuration key server.port:"),
    ],
)
def test_an_invalid_configuration_is_refused_after_a_valid_one_was_recorded(
    tmp_path: Path, change: str, env: dict[str, str], message: str
) -> None:
    path = _write(tmp_path, f'[database]\nurl = "sqlite:///{tmp_path / "h.db"}"\n')
    assert _keys_create(tmp_path)[0] == 0
    assert _keys_create(tmp_path)[1] is False  # recorded: the next one would skip validation
    path.write_text(path.read_text(encoding="utf-8") + change, encoding="utf-8")
    code, _, out, err = _keys_create(tmp_path, env)
    assert code == 1 and out == ""
    assert err.startswith(message) and "\n" not in err  # one line, as every command says it
    keys_list = _herald(tmp_path, ["-m", "herald", "keys", "list"], env)
    assert (keys_list.returncode, keys_list.stderr.strip()) == (1, err)  # the same refusal


def test_config_check_records_a_configuration_it_passed(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from herald.entrypoints.cli import app

    path = _write(tmp_path, f'[database]\nurl = "{FILE_URL}"\n')
    assert CliRunner().invoke(app, ["config", "check", str(path)]).exit_code == 0
    assert config_source.validated_database_url(path) == FILE_URL
    # A configuration pydantic accepts but the providers' check refuses is not recorded.
    path.write_text(
        path.read_text(encoding="utf-8") + '[channels.email]\nproviders = ["pigeon"]\n', encoding="utf-8"
    )
    assert load_settings(path).channels["email"].providers == ["pigeon"]
    assert CliRunner().invoke(app, ["config", "check", str(path)]).exit_code == 1
    assert config_source.validated_database_url(path) is None
