"""``promtool`` (Debian's ``prometheus`` package): missing, it skips locally and fails when
``HERALD_REQUIRE_SERVICES=1`` (CI installs it with ``scripts/system-deps``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "herald-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "herald-alerts.test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (Debian package prometheus; scripts/system-deps)"
        if REQUIRE_SERVICES:
            pytest.fail(message + " and HERALD_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(message)
    return found


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [promtool(), *args], input=stdin, capture_output=True, timeout=60, check=False, cwd=RULES.parent
    )
