"""A tracked email as a person reads it: its HTML body loaded in Chromium loads the open pixel,
and a click on its link goes through herald's redirect to the shop. herald runs as `herald
serve` in a subprocess; the mail arrives at the SMTP test server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.net import free_port
from tests.support.process import HeraldProcess, herald_cli, write_config
from tests.support.smtp import SmtpTestServer

pytestmark = pytest.mark.slow


class _Landing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>Shop</title><h1 id=landing>The deal of the week</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def shop() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Landing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def poll(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"not met in {timeout}s (last: {last!r})")


def test_tracked_email_opened_and_clicked_in_chromium(
    browser: Any, artifacts: Path, tmp_path: Path, smtp_server: SmtpTestServer, shop: str
) -> None:
    h = HeraldProcess(tmp_path)
    write_config(
        tmp_path,
        smtp_server.port,
        extra=f'\n[server]\npublic_url = "{h.url}"\n\n[tracking]\nmachine_seconds = 1.0\n',
    )
    h.key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    h.start()
    try:
        with h.client() as c:
            template = {
                "category": "marketing",
                "channels": {
                    "email": {
                        "subject": "Your weekly digest",
                        "text": "The deal: " + shop + "/deal",
                        "html": (
                            "<html><body><h1>Hello {{ user.data.name }}</h1>"
                            f'<p><a id="deal" href="{shop}/deal?w={{{{ data.week }}}}">See the deal</a></p>'
                            "</body></html>"
                        ),
                    }
                },
            }
            assert c.put("/v1/templates/weekly_digest", json=template).status_code in (200, 201)
            assert (
                c.put("/v1/users/u1", json={"email": "ana@example.com", "data": {"name": "Ana"}}).status_code
                == 200
            )
            r = c.post(
                "/v1/notifications", json={"to": "u1", "template": "weekly_digest", "data": {"week": "49"}}
            )
            assert r.status_code == 202, r.text
            nid = r.json()["id"]

            def sent() -> dict[str, Any] | None:
                ds = c.get(f"/v1/notifications/{nid}").json().get("deliveries") or []
                return ds[0] if ds and ds[0]["status"] == "sent" and smtp_server.handler.received else None

            delivery = poll(sent)
            html_part = smtp_server.handler.received[0].message.get_body(preferencelist=("html",))
            assert html_part is not None
            html = str(html_part.get_content())  # type: ignore[attr-defined]
            assert f"{h.url}/t/o/" in html and f"{h.url}/t/c/" in html and f"{shop}/deal" not in html

            # A person reads it later than a scanner would (machine_seconds = 1 here).
            time.sleep(1.5)
            page = browser.new_page()
            try:
                page.set_content(html, wait_until="load")  # loads the pixel from herald

                def events() -> list[dict[str, Any]]:
                    got: list[dict[str, Any]] = c.get(f"/v1/deliveries/{delivery['id']}/engagement").json()[
                        "events"
                    ]
                    return got

                (opened,) = poll(events)
                assert (opened["event"], opened["machine"], opened["source"]) == ("opened", False, "pixel")
                page.click("#deal")
                page.wait_for_url(f"{shop}/deal?w=49")
                assert page.inner_text("#landing") == "The deal of the week"
                page.screenshot(path=str(artifacts / "email-tracking-landing.png"))
            finally:
                page.close()

            def both() -> list[dict[str, Any]] | None:
                got = events()
                return got if len(got) == 2 else None

            opened_then_clicked = poll(both)
            assert [(e["event"], e["machine"], e["link"]) for e in opened_then_clicked] == [
                ("opened", False, None),
                ("clicked", False, 0),
            ]
            assert opened_then_clicked[1]["url"] == f"{shop}/deal?w=49"
            assert c.get(f"/v1/notifications/{nid}").json()["deliveries"][0]["status"] == "read"

            stats = c.get("/v1/stats", params={"by": "template", "bucket": "day"}).json()
            (row,) = [x for x in stats["rows"] if x["template"] == "weekly_digest"]
            assert (row["sent"], row["opened"], row["clicked"], row["clicks"]) == (1, 1, 1, 1)
            assert row["machine"] == {"opened": 0, "clicked": 0, "clicks": 0}
            assert row["rates"]["open_rate"] == 1.0

            # The terminal shows the same funnel.
            table = herald_cli(tmp_path, "stats", "--by", "template", "--bucket", "day")
            assert table.returncode == 0, table.stderr
            line = next(ln for ln in table.stdout.splitlines() if ln.startswith("weekly_digest"))
            assert line.split()[2:6] == ["1", "0", "1", "1"]  # sent, delivered, opened, clicked
            assert httpx.get(f"{shop}/deal").status_code == 200
    finally:
        h.stop()
