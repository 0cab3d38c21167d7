"""What the widget browser tests share: a herald subprocess, an app page on another origin."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.net import free_port
from tests.support.process import HeraldProcess, herald_cli


class AppSite:
    """The embedding web app: a tiny server on another port (another origin than herald)."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.port = free_port()
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path.split("?")[0].split("#")[0])
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def embed(self, path: str, herald_url: str, user: str, token: str) -> str:
        """An app page with the three-line embed; its URL."""
        self.pages[path] = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>My app</title>
<style>body{{font-family:sans-serif;margin:0}} header{{display:flex;justify-content:space-between;
align-items:center;padding:10px 20px;background:#0f172a;color:#fff}} herald-inbox{{color:#fff}}</style>
</head><body>
<header><strong>My app</strong>
<script src="{herald_url}/widget/herald-inbox.js" defer></script>
<herald-inbox server="{herald_url}" user="{user}" token="{token}"></herald-inbox>
</header>
<main style="padding:20px;height:600px">Your dashboard</main>
<script>
window.heraldEvents = [];
for (const name of ["herald:notification", "herald:read"]) {{
  document.addEventListener(name, (e) => window.heraldEvents.push([name, e.detail]));
}}
</script>
</body></html>"""
        return f"{self.origin}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def herald_config(cwd: Path, origin: str, *, database_url: str | None = None, extra: str = "") -> None:
    (cwd / "herald.toml").write_text(
        f"""
[database]
url = "{database_url or f"sqlite:///{cwd / 'herald.db'}"}"

[server]
cors_origins = ["{origin}"]

[queue]
idle_wait_seconds = 0.5

[providers.console]
path = "{cwd / "console.jsonl"}"

[logging]
level = "warning"
{extra}
"""
    )


def admin_key(cwd: Path) -> str:
    key = herald_cli(cwd, "keys", "create", "--scope", "admin").stdout.strip()
    assert key.startswith("hk_"), key
    return key


def user_token(h: HeraldProcess, user: str, **profile: Any) -> str:
    with h.client() as c:
        assert c.put(f"/v1/users/{user}", json=profile).status_code == 200
        return str(c.post(f"/v1/users/{user}/token").json()["token"])


def send_in_app(h: HeraldProcess, user: str, title: str, url: str = "#opened") -> str:
    with h.client() as c:
        r = c.post(
            "/v1/notifications",
            json={
                "to": user,
                "content": {"title": title, "body": f"body of {title}", "url": url},
                "channels": ["in_app"],
            },
        )
        assert r.status_code == 202, r.text
        return str(r.json()["id"])


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def widget_connected(page: Any) -> bool:
    return bool(
        page.evaluate(
            "() => { const w = document.querySelector('herald-inbox');"
            " return !!(w && w.client && w.client.connected); }"
        )
    )


def item_titles(page: Any) -> list[str]:
    return list(page.locator("herald-inbox [part=item] .t").all_text_contents())
