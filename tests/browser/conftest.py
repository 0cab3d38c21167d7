"""Browser tests: Debian's Chromium driven by Playwright (never a downloaded browser).

``scripts/system-deps`` installs ``chromium`` on a fresh machine. Screenshots go to
``test-artifacts/`` at the repository root (kept out of git; CI keeps the folder).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("HERALD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _require_chromium() -> None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        msg = f"Chromium not found at {CHROMIUM} (scripts/system-deps installs it)"
        if os.environ.get("HERALD_REQUIRE_SERVICES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


# Module scope, not session: Playwright's sync API keeps an event loop running in the main
# thread while it is open, and every asyncio test collected after it in the same run (contract,
# integration, unit) then fails with "Cannot run the event loop while another loop is running".
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium per test module (a Playwright ``Browser``, sync API)."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def artifacts() -> Path:
    """Where a test keeps its screenshots."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
