"""Helpers for the inbox, preference and unsubscribe tests (issue 19)."""

from __future__ import annotations

import re

from tests.support.herald import Running
from tests.support.smtp import SmtpTestServer


async def unsubscribe_path(h: Running, smtp_server: SmtpTestServer, user: str) -> str:
    """Send ``user`` a marketing email; the path of its List-Unsubscribe link."""
    r = await h.client.put(f"/v1/users/{user}", json={"email": f"{user}@example.com"})
    assert r.status_code == 200, r.text
    r = await h.client.post(
        "/v1/notifications",
        json={
            "to": user,
            "content": {"subject": "Deals", "text": "x"},
            "channels": ["email"],
            "category": "marketing",
        },
    )
    await h.wait_final(r.json()["id"])
    msg = [x.message for x in smtp_server.handler.received][-1]
    url = str(msg["List-Unsubscribe"]).strip("<>")
    return url[url.index("/v1/unsubscribe/") :]


def checked_boxes(html: str) -> dict[str, bool]:
    """Every checkbox of a page: name -> checked (disabled ones left out: a form omits them)."""
    out = {}
    for tag in re.findall(r"<input[^>]*>", html):
        name = re.search(r'name="([^"]+)"', tag)
        if 'type="checkbox"' in tag and name and " disabled" not in tag:
            out[name.group(1)] = " checked" in tag
    return out
