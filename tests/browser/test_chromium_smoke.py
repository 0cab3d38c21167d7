"""The browser the other browser tests rely on starts, renders a page and runs its script."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def test_chromium_renders_a_page_and_runs_script(browser: Any, artifacts: Path) -> None:
    page = browser.new_page()
    try:
        page.set_content("<p id=p>herald</p><script>document.getElementById('p').dataset.ok = '1'</script>")
        assert page.get_attribute("#p", "data-ok") == "1"
        page.screenshot(path=str(artifacts / "chromium-smoke.png"))
        assert (artifacts / "chromium-smoke.png").stat().st_size > 0
    finally:
        page.close()
