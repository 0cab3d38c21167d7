"""The signature verification examples of docs/providers/webhook.md, run against a real signed
delivery from a running herald (Python always; JavaScript when node is installed)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.herald import make_settings, running_herald
from tests.support.waits import eventually

DOC = Path(__file__).resolve().parents[2] / "docs" / "providers" / "webhook.md"
SECRET = "docs-example-secret-0123456789"


def example(language: str) -> str:
    m = re.search(rf"<!-- webhook-verify-{language}[^>]*-->\s*```{language}\n(.*?)```", DOC.read_text(), re.S)
    assert m is not None, f"docs/providers/webhook.md lost its {language} example"
    code = m.group(1)
    assert len(code.strip().splitlines()) <= 10  # "a ten-line verification example"
    return code


async def a_signed_delivery(tmp_path: Path) -> tuple[bytes, dict[str, str]]:
    received: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks/herald", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        settings = make_settings(
            tmp_path,
            channels={"webhook": {"providers": ["webhook"]}},
            providers={
                "console": {"path": str(tmp_path / "console.jsonl")},
                "webhook": {
                    "signing_secret": SECRET,
                    "previous_signing_secrets": ["an-older-secret-abcdefgh"],
                    "allowed_hosts": [f"127.0.0.1:{port}"],
                },
            },
        )
        async with running_herald(settings) as h:
            r = await h.client.put(
                "/v1/users/u1", json={"webhook_url": f"http://127.0.0.1:{port}/hooks/herald"}
            )
            assert r.status_code == 200, r.text
            r = await h.client.post(
                "/v1/notifications",
                json={"to": "u1", "content": {"body": "hello"}, "channels": ["webhook"]},
            )
            assert r.status_code == 202, r.text

            async def arrived() -> bool:
                return bool(received)

            await eventually(arrived, timeout=30)
    finally:
        await runner.cleanup()
    return received[0]


async def test_the_documented_examples_verify_a_real_delivery(tmp_path: Path) -> None:
    body, headers = await a_signed_delivery(tmp_path)
    header = headers["Herald-Signature"]
    assert header.count("v1=") == 2  # one per secret while rotating
    assert json.loads(body)["id"] == headers["Herald-Delivery-Id"]

    scope: dict[str, Any] = {}
    exec(example("python"), scope)  # the documentation's own code
    verify = scope["verify"]
    assert verify(SECRET.encode(), body, header) is True
    assert verify(b"an-older-secret-abcdefgh", body, header) is True  # rotation
    assert verify(SECRET.encode(), body + b" ", header) is False  # the body was altered
    assert verify(b"wrong-secret-0123456789", body, header) is False
    old = re.sub(r"t=\d+", f"t={int(time.time()) - 3600}", header)
    assert verify(SECRET.encode(), body, old) is False  # a replay an hour later
    assert verify(SECRET.encode(), body, "v1=abc") is False and verify(SECRET.encode(), body, "") is False

    node = shutil.which("node")
    if node is None:
        return
    script = example("javascript") + (
        "\nconst [secret, body, header] = JSON.parse(process.argv[1]);\n"
        "const raw = Buffer.from(body, 'base64');\n"
        "process.stdout.write(JSON.stringify([verify(secret, raw, header),"
        " verify(secret, Buffer.concat([raw, Buffer.from(' ')]), header),"
        " verify('wrong-secret-0123456789', raw, header)]));\n"
    )
    args = json.dumps([SECRET, base64.b64encode(body).decode(), header])
    done = await asyncio.to_thread(
        subprocess.run, [node, "-e", script, args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [True, False, False]
