"""What a configuration is read from, and the marker of the configurations that validated.

A configuration is one TOML file (``--config``, else ``HERALD_CONFIG``, else ``./herald.toml``
when present) plus the ``HERALD_*`` environment; :func:`herald.config.settings_from` validates
it with pydantic. That validation (pydantic, pydantic-settings and herald's ~25 models) is most
of what a short command such as ``herald keys create`` costs to start, and that command needs one
value of it: ``database.url``.

So, after a full validation succeeded, the CLI records a digest of everything the validation
read or ran (the file's bytes, the ``HERALD_*`` environment, the code of herald's configuration
and of pydantic, the Python version) together with the ``database.url`` it produced. A later
command whose inputs give the same digest knows the configuration is valid without validating
it again, and reads ``database.url`` with the standard library (:func:`validated_database_url`).
A configuration that never validated, a changed file, a different environment or upgraded code
gives another digest: the command validates in full and refuses an invalid configuration as
every command does.

The marker holds digests only (SHA-256, hex), never a value of the configuration. It lives in
the user's cache folder (``$XDG_CACHE_HOME/herald``, else ``~/.cache/herald``): the
configuration's own folder may be read-only (``/etc/herald``, a mounted secret) and a
PostgreSQL deployment has no database file to sit beside, while a cache folder is where a
per-user, re-creatable memo belongs; the digests cover that user's environment. Deleting it
costs one full validation. When it cannot be read or written, commands validate in full.

This module imports only the standard library (``tests/unit/test_cli_imports.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "HERALD_"
DEFAULT_PATH = "herald.toml"
DEFAULT_DATABASE_URL = "sqlite:///herald.db"

# Bump when what the digest covers changes meaning: every older marker then misses.
_FORMAT = 1
_KEEP = 64  # digests kept (the newest): one per configuration and environment in use
_MARKER_NAME = "validated-config"
_HEADER = "# herald: digests of configurations that validated (herald/config_source.py); safe to delete\n"
_HERALD = Path(__file__).resolve().parent
# The code a validation runs: herald's configuration tree and the domain rules it checks with;
# pydantic and pydantic-settings (located, not imported).
_HERALD_CODE = ("__init__.py", "config.py", "config_source.py", "domain")
_LIBRARIES = ("pydantic", "pydantic_core", "pydantic_settings")


@dataclass(frozen=True)
class ConfigSource:
    """The inputs of one validation, read once: the chosen file (``data`` None when there is
    none) and the ``HERALD_*`` environment (names as the process has them)."""

    path: Path
    explicit: bool  # named by --config or HERALD_CONFIG: it must exist
    data: bytes | None
    env: dict[str, str] = field(repr=False)

    def text(self) -> str:
        """The file as text, newlines as reading it in text mode gives them (UnicodeDecodeError
        when it is not UTF-8)."""
        if self.data is None:
            return ""
        return self.data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def read_source(path: str | Path | None = None) -> ConfigSource:
    """The file ``path`` (or ``HERALD_CONFIG``, or ``./herald.toml`` when present) and the
    ``HERALD_*`` environment. Raises nothing for a missing file: validation says it."""
    explicit = path is not None or "HERALD_CONFIG" in os.environ
    chosen = Path(path or os.environ.get("HERALD_CONFIG", DEFAULT_PATH))
    data = chosen.read_bytes() if chosen.exists() else None
    # pydantic-settings reads environment names case-insensitively (case_sensitive=False).
    env = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
    return ConfigSource(chosen, explicit, data, env)


def database_url(source: ConfigSource) -> str | None:
    """``database.url`` as pydantic-settings resolves it for :class:`herald.config.Settings`:
    the environment (``HERALD_DATABASE__URL``, over a ``HERALD_DATABASE`` JSON object) over
    the file's ``[database] url`` over the default. None when it cannot tell (a file that is
    not TOML, JSON that is not an object, two names differing only in case). Not a validation:
    only :func:`validated_database_url` says the configuration is valid."""
    import tomllib  # noqa: PLC0415 - only the fast path reads TOML here

    env = {k.lower(): v for k, v in source.env.items()}
    if len(env) != len(source.env):
        return None
    url: object = DEFAULT_DATABASE_URL
    try:
        table = tomllib.loads(source.text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    database = table.get("database")
    if isinstance(database, dict) and "url" in database:
        url = database["url"]
    if "herald_database" in env:
        try:
            whole = json.loads(env["herald_database"])
        except ValueError:
            return None
        if not isinstance(whole, dict):
            return None
        url = whole.get("url", url)
    url = env.get("herald_database__url", url)
    return url if isinstance(url, str) else None


def _stamp(path: Path) -> list[object]:
    """What CPython's own bytecode cache checks a source file by: its size and mtime."""
    try:
        st = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns]


def _code_stamps() -> list[object]:
    from herald import __version__  # noqa: PLC0415 - the package is loaded: this module is in it

    stamps: list[object] = [__version__, sys.version, sys.executable]
    for name in _HERALD_CODE:
        path = _HERALD / name
        if path.is_dir():
            stamps.extend(_stamp(p) for p in sorted(path.glob("*.py")))
        else:
            stamps.append(_stamp(path))
    from importlib.util import find_spec  # noqa: PLC0415

    for library in _LIBRARIES:
        spec = find_spec(library)  # finds the package without importing it
        origin = spec.origin if spec is not None else None
        stamps.append(_stamp(Path(origin)) if origin else [library, None])
    return stamps


def digest(source: ConfigSource, url: str) -> str:
    """The digest of everything a validation of ``source`` read or ran, bound to the
    ``database.url`` it gave (a reader that resolves another URL misses)."""
    file_digest = None if source.data is None else hashlib.sha256(source.data).hexdigest()
    parts = [_FORMAT, _code_stamps(), file_digest, sorted(source.env.items()), url]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def marker_path() -> Path | None:
    """``$XDG_CACHE_HOME/herald/validated-config`` (else under ``~/.cache``); None without a
    home folder."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG rule: a relative value is ignored
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "herald" / _MARKER_NAME


def _recorded(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [line for line in lines if line and not line.startswith("#")]


def validated_database_url(path: str | Path | None = None) -> str | None:
    """``database.url`` of the configuration ``path`` names when that configuration, with this
    environment and this code, validated before; None otherwise (validate in full)."""
    marker = marker_path()
    if marker is None:
        return None
    try:
        source = read_source(path)
    except OSError:
        return None
    if source.data is None and source.explicit:
        return None  # validation refuses it
    url = database_url(source)
    if url is None or digest(source, url) not in _recorded(marker):
        return None
    return url


def record(source: ConfigSource, url: str) -> None:
    """Remember that ``source`` validated and gave ``url``. Best effort: a folder that cannot
    be written leaves every command validating in full."""
    marker = marker_path()
    if marker is None:
        return
    entry = digest(source, url)
    known = _recorded(marker)
    if entry in known:
        return
    kept = [*[d for d in known if d != entry][-(_KEEP - 1) :], entry]
    try:
        marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{_MARKER_NAME}.", dir=marker.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(_HEADER + "".join(d + "\n" for d in kept))
            os.replace(tmp, marker)  # readers see the old list or the new one, whole
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        return
