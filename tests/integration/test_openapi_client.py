"""The OpenAPI document is honest: a client generated from it with openapi-python-client (offline,
into a temporary folder) works against a running herald, errors included; the main answers match
their declared shapes; /docs and /redoc load only herald's own assets."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from openapi_spec_validator import validate

from herald.entrypoints.api import openapi_models as m
from tests.support.herald import make_settings, running_herald

GENERATOR = Path(sys.executable).with_name("openapi-python-client")


def generate_client(spec: dict[str, Any], into: Path) -> Any:
    if not GENERATOR.exists():
        pytest.fail(f"{GENERATOR} missing: install the test extras")
    source = into / "openapi.json"
    source.write_bytes(orjson.dumps(spec))
    done = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(source),
            "--meta",
            "none",
            "--output-path",
            str(into / "herald_api_client"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=into,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(into))
    try:
        return importlib.import_module("herald_api_client")
    finally:
        sys.path.remove(str(into))


@pytest.fixture
def purge_generated() -> Any:
    yield
    for name in [n for n in sys.modules if n == "herald_api_client" or n.startswith("herald_api_client.")]:
        del sys.modules[name]


async def test_a_generated_client_works_errors_included(tmp_path: Path, purge_generated: None) -> None:
    (tmp_path / "herald").mkdir()
    async with running_herald(make_settings(tmp_path / "herald")) as h:
        spec = (await h.client.get("/openapi.json")).json()
        validate(spec)
        pkg = generate_client(spec, tmp_path)
        from herald_api_client import AuthenticatedClient, Client  # type: ignore[import-not-found]
        from herald_api_client.api.notifications import get_notification, send  # type: ignore[import-not-found]
        from herald_api_client.api.operations import healthz  # type: ignore[import-not-found]
        from herald_api_client.api.templates import get_template, put_template  # type: ignore[import-not-found]
        from herald_api_client.api.users import put_user  # type: ignore[import-not-found]
        from herald_api_client.models import (  # type: ignore[import-not-found]
            Accepted,
            Notification,
            Problem,
            SendBody,
            Template,
            TemplateBody,
            UserBody,
        )

        assert pkg is not None
        async with AuthenticatedClient(
            base_url=h.base_url, token=h.key, raise_on_unexpected_status=True
        ) as api:
            ok = await healthz.asyncio(client=api)
            assert ok is not None and ok.status == "ok"

            # Unknown template: a parsed problem, not an exception.
            missing = await get_template.asyncio_detailed(client=api, name="nope")
            assert missing.status_code == 404
            assert isinstance(missing.parsed, Problem)
            assert missing.parsed.status == 404 and "nope" in missing.parsed.detail

            body = TemplateBody.from_dict(
                {"channels": {"email": {"subject": "Hi", "text": "Code {{ data.code }}"}}}
            )
            stored = await put_template.asyncio(client=api, name="welcome", body=body)
            assert isinstance(stored, Template) and stored.version == 1

            await put_user.asyncio(
                client=api, user_id="ana", body=UserBody.from_dict({"email": "ana@example.com"})
            )
            # An invalid send: the 422 problem names the field.
            bad = await send.asyncio_detailed(
                client=api, body=SendBody.from_dict({"to": "ana", "template": "nope"})
            )
            assert bad.status_code == 422 and isinstance(bad.parsed, Problem)
            assert "nope" in bad.parsed.detail

            sent = await send.asyncio(
                client=api,
                body=SendBody.from_dict({"to": "ana", "template": "welcome", "data": {"code": "7"}}),
            )
            assert isinstance(sent, Accepted) and sent.id.startswith("ntf_")
            final = await h.wait_final(sent.id)
            got = await get_notification.asyncio(client=api, notification_id=sent.id)
            assert isinstance(got, Notification) and got.id == sent.id and got.status == final["status"]
            assert got.deliveries and got.deliveries[0].attempts[0].outcome == "ok"

        # No key, and a bad key: a parsed 401 problem.
        async with Client(base_url=h.base_url) as anonymous:
            r = await get_template.asyncio_detailed(client=anonymous, name="welcome")
            assert r.status_code == 401 and isinstance(r.parsed, Problem)
        async with AuthenticatedClient(base_url=h.base_url, token="hk_wrong") as wrong:
            r = await get_template.asyncio_detailed(client=wrong, name="welcome")
            assert r.status_code == 401 and isinstance(r.parsed, Problem)
        reader = await h.new_key("read")
        async with AuthenticatedClient(base_url=h.base_url, token=reader) as ro:
            r = await put_template.asyncio_detailed(client=ro, name="welcome", body=body)
            assert r.status_code == 403 and isinstance(r.parsed, Problem)


async def test_declared_shapes_match_real_answers_and_auth_is_declared(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        spec = (await h.client.get("/openapi.json")).json()
        assert spec["components"]["securitySchemes"]["bearerAuth"] == {
            "type": "http",
            "scheme": "bearer",
            "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
        }
        assert "HTTPValidationError" not in spec["components"]["schemas"]
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                for code, answer in op["responses"].items():
                    if code.startswith("4"):
                        ref = answer["$ref"].rsplit("/", 1)[-1]
                        content = spec["components"]["responses"][ref]["content"]
                        assert list(content) == ["application/problem+json"], (method, path, code)
                if op.get("security"):
                    assert op["security"] == [{"bearerAuth": []}], (method, path)
                    assert {"401", "403"} <= set(op["responses"]), (method, path)
        for path in ("/v1/notifications", "/v1/templates/{name}", "/v1/users/{user_id}", "/v1/dead-letters"):
            for method, op in spec["paths"][path].items():
                assert op.get("security") == [{"bearerAuth": []}], (method, path)
        await h.client.put("/v1/templates/t", json={"channels": {"email": {"subject": "a", "text": "b"}}})
        await h.client.put("/v1/users/u", json={"email": "u@example.com"})
        m.Template.model_validate((await h.client.get("/v1/templates/t")).json(), strict=False)
        m.User.model_validate((await h.client.get("/v1/users/u")).json())
        r = await h.client.post("/v1/notifications", json={"to": "u", "template": "t"})
        m.Accepted.model_validate(r.json())
        await h.wait_final(r.json()["id"])
        m.Notification.model_validate((await h.client.get(f"/v1/notifications/{r.json()['id']}")).json())
        m.NotificationList.model_validate((await h.client.get("/v1/notifications")).json())
        m.DeadLetters.model_validate((await h.client.get("/v1/dead-letters")).json())
        problem = (await h.client.get("/v1/templates/nope")).json()
        m.Problem.model_validate(problem)


async def test_docs_and_redoc_load_only_local_assets(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        for page in ("/docs", "/redoc"):
            html = (await h.client.get(page)).text
            urls = re.findall(r'(?:src|href)=["\']([^"\']+)', html) + re.findall(r"url: ?'([^']+)'", html)
            assert urls, page
            for url in urls:
                assert url.startswith("/"), (page, url)
                r = await h.client.get(url)
                assert r.status_code == 200 and len(r.content) > 0, (page, url)
            assert "cdn" not in html.lower() and "fonts.googleapis" not in html
        licences = Path(__file__).resolve().parents[2] / "src/herald/web/static/vendor"
        for folder in ("swagger-ui-dist-5.36.0", "redoc-2.5.4"):
            assert (licences / folder / "LICENSE").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
