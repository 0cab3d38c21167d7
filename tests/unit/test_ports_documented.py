"""The ports are the contracts between services and adapters: every method of every Protocol in
``herald.ports`` says what it does, its guarantees and what it returns, and every role of the
store is implemented, with the same parameters, by the SQL store and by the in-memory twin."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

import herald.ports
import herald.ports_console
from herald.adapters.store.sql import SqlStore
from herald.ports import ROLES, Store
from herald.testing import memory_store


def _modules() -> Iterator[ModuleType]:
    yield herald.ports
    for info in pkgutil.walk_packages(herald.ports.__path__, prefix="herald.ports."):
        yield importlib.import_module(info.name)
    yield herald.ports_console


def _protocols() -> dict[str, type]:
    """Every Protocol class defined in the ports package (and the console's old module name)."""
    found: dict[str, type] = {}
    for module in _modules():
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and getattr(obj, "_is_protocol", False)
                and obj.__module__.startswith("herald.ports")
            ):
                found[f"{obj.__module__}.{name}"] = obj
    return found


PROTOCOLS = _protocols()


def _own_methods(proto: type) -> dict[str, Any]:
    """The public methods ``proto`` itself declares (inherited ones are checked on their own class)."""
    return {
        name: member
        for name, member in vars(proto).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


def _role_methods(proto: type) -> dict[str, Any]:
    """Every public method of ``proto``, its own and its roles'."""
    out: dict[str, Any] = {}
    for klass in reversed(proto.__mro__):
        if getattr(klass, "_is_protocol", False):
            out.update(_own_methods(klass))
    return out


def test_the_walk_finds_every_port() -> None:
    names = {p.__name__ for p in PROTOCOLS.values()}
    assert {"Store", "Queue", "Cache", "Clock", "Provider", "BatchProvider", "CallbackReceiver"} <= names
    assert {"InboxPublisher", "InboxFeed", "LiveSignals", "ConsoleReads", "RouterWakeups"} <= names
    assert {r.__name__ for r in ROLES} <= names
    assert herald.ports_console.ConsoleReads is herald.ports.ConsoleReads


@pytest.mark.parametrize("qualname", sorted(PROTOCOLS))
def test_every_port_method_has_a_docstring(qualname: str) -> None:
    proto = PROTOCOLS[qualname]
    assert (proto.__doc__ or "").strip(), f"{qualname} has no docstring"
    # ``__doc__``, not inspect.getdoc: a method must say it itself, not inherit its words.
    missing = [name for name, fn in _own_methods(proto).items() if not (fn.__doc__ or "").strip()]
    assert missing == [], f"{qualname}: methods without a docstring: {missing}"


def test_every_exported_name_is_importable_from_herald_ports() -> None:
    for name in herald.ports.__all__:
        assert getattr(herald.ports, name) is not None
    assert sorted(set(herald.ports.__all__)) == sorted(herald.ports.__all__)


def test_the_roles_partition_the_store() -> None:
    """Each method of Store belongs to exactly one role, and Store is every role."""
    owners: dict[str, list[str]] = {}
    for role in ROLES:
        for name in _own_methods(role):
            owners.setdefault(name, []).append(role.__name__)
    assert {n: o for n, o in owners.items() if len(o) > 1} == {}
    assert set(owners) == set(_role_methods(Store))
    assert all(role in Store.__mro__ for role in ROLES)


def _params(fn: Any) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name != "self"]


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.__name__)
async def test_sql_store_and_the_in_memory_twin_implement_each_role(role: type) -> None:
    twin = memory_store()
    try:
        for impl in (SqlStore, twin):
            for name, declared in _role_methods(role).items():
                found = getattr(impl, name, None)
                assert found is not None, f"{impl!r} lacks {role.__name__}.{name}"
                assert inspect.iscoroutinefunction(found) == inspect.iscoroutinefunction(declared), name
                assert _params(found) == _params(declared), f"{role.__name__}.{name}: parameters differ"
    finally:
        await twin.close()
