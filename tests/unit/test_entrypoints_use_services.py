"""Entrypoints call services only (issue 18): no route handler, page or command reaches the
store or an adapter. Every module under ``src/herald/entrypoints`` is parsed (``ast``, nothing
is imported) and refused if it

- calls a method through a store: ``c.store.get_user(...)``, ``store.put_rule(...)``, also
  further along a chain (``c.store.db.run(...)``);
- imports ``Store`` or one of its role protocols from ``herald.ports``, or ``build_store``;
- imports ``herald.adapters`` (import-linter forbids it too: ``.importlinter``).

``entrypoints/service_layer.py`` is where the entrypoints' services are built: it hands the
store to them and starts and closes it (nothing else), so it may build one.
"""

from __future__ import annotations

import ast
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

import herald.ports
from herald import entrypoints

ROOT = Path(entrypoints.__file__).parent
SEAM = ROOT / "service_layer.py"
LIFECYCLE = {"start", "close"}  # what the seam may call on the store it builds


def store_protocols() -> set[str]:
    """``Store`` and every protocol it is composed of (its roles), as ``herald.ports`` names them."""
    store = herald.ports.Store
    names = {"Store"}
    for cls in store.__mro__[1:]:
        if cls in (object, typing.Protocol, typing.Generic):
            continue
        if getattr(cls, "_is_protocol", False) and getattr(herald.ports, cls.__name__, None) is cls:
            names.add(cls.__name__)
    return names


FORBIDDEN_NAMES = store_protocols() | {"build_store"}


@dataclass(frozen=True)
class Finding:
    line: int
    what: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.what}"


def _chain(node: ast.expr) -> list[str]:
    """``a.b.c`` -> ["a", "b", "c"] (a call or subscript in the chain ends it)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return parts[::-1]


def findings(source: str, *, seam: bool = False) -> list[Finding]:
    out: list[Finding] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "herald.adapters" or alias.name.startswith("herald.adapters."):
                    out.append(Finding(node.lineno, f"imports {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module == "herald.adapters" or module.startswith("herald.adapters."):
                out.append(Finding(node.lineno, f"imports from {module}"))
            elif module == "herald" and any(a.name == "adapters" for a in node.names):
                out.append(Finding(node.lineno, "imports herald.adapters"))
            elif module.startswith(("herald.ports", "herald.store_root")):
                for alias in node.names:
                    if alias.name in FORBIDDEN_NAMES and not (seam and alias.name == "build_store"):
                        out.append(Finding(node.lineno, f"imports {alias.name} from {module}"))
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_NAMES:
            if _chain(node.value)[-1:] in (["ports"], ["store_root"]) and not (
                seam and node.attr == "build_store"
            ):
                out.append(Finding(node.lineno, f"uses {'.'.join(_chain(node))}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            through = _chain(node.func.value)
            if "store" in through:
                if seam and through == ["store"] and node.func.attr in LIFECYCLE:
                    continue
                out.append(
                    Finding(node.lineno, f"calls {'.'.join([*through, node.func.attr])}() through a store")
                )
    return out


def modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_entrypoint_calls_services_only(path: Path) -> None:
    found = findings(path.read_text(encoding="utf-8"), seam=path == SEAM)
    assert not found, f"{path.relative_to(ROOT.parent)} reaches past the services:\n" + "\n".join(
        map(str, found)
    )


def test_every_entrypoint_module_is_checked() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in modules()}
    assert {"api/routes_ops.py", "web/pages.py", "cli.py", "cli_users.py", "deps.py"} <= names
    assert "Store" in FORBIDDEN_NAMES


@pytest.mark.parametrize(
    "source",
    [
        "async def f(c):\n    await c.store.get_user('u')\n",
        "async def f(store):\n    await store.put_rule(r, now=1)\n",
        "async def f(c):\n    await c.store.db.run(op)\n",
        "from herald.ports import Store\n",
        "from herald.ports import Clock, Store as S\n",
        "import herald.ports\nx: herald.ports.Store\n",
        "from herald.adapters.store.sql import SqlStore\n",
        "import herald.adapters.queue.sql\n",
        "from herald import adapters\n",
        "from herald.store_root import build_store\n",
        "async def f(store):\n    await store.start()\n",
    ],
)
def test_the_check_refuses(source: str) -> None:
    assert findings(source), source


@pytest.mark.parametrize(
    "source",
    [
        "async def f(s):\n    await s.directory.user('u')\n",
        "from herald.ports import DeadLetterFilter, NotificationFilter\n",
        "def f(c):\n    return Services(c.store, c.queue)\n",  # handing it over is composition
        "def f(stored):\n    return stored.channels.get('email')\n",
    ],
)
def test_the_check_allows(source: str) -> None:
    assert findings(source) == [], source


def test_the_seam_may_start_and_close_the_store_it_builds_only() -> None:
    source = "from herald.store_root import build_store\nasync def f(store):\n    await store.start()\n"
    assert findings(source, seam=True) == []
    assert findings("async def f(store):\n    await store.get_user('u')\n", seam=True)
