"""docs/configuration.md is the output of ``herald config reference``: every key of every settings
class, with its type, default, environment variable and description."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from typer.testing import CliRunner

from herald.config import Settings
from herald.entrypoints.cli import app
from herald.entrypoints.config_reference import REGENERATE, reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_docs_configuration_matches_the_settings_classes() -> None:
    assert DOC.read_text(encoding="utf-8") == reference(), (
        f"docs/configuration.md is out of date with the settings classes: run `{REGENERATE}`"
    )


def walk(model: type[BaseModel], prefix: str) -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += walk(sub, f"{prefix}{name}.")
        elif name not in ("categories", "channels", "providers"):
            keys.append(f"{prefix}{key}")
    return keys


def test_every_settings_key_is_in_the_reference_with_its_environment_variable() -> None:
    text = reference()
    keys = walk(Settings, "")
    assert "server.port" in keys and "retry.schedule" in keys
    for key in keys:
        env = "HERALD_" + key.upper().replace(".", "__")
        assert f"| `{key}` |" in text and f"`{env}`" in text, key
    for provider in ("sendgrid", "ses", "twilio", "fcm", "apns", "webpush", "webhook", "chat", "smtp"):
        assert f"## `[providers.{provider}]`" in text
    for key in (
        "providers.webhook.allowed_hosts",
        "providers.webhook.allowed_networks",
        "providers.webhook.allow_private",
        "providers.twilio.status_callback_base_url",
        "providers.sendgrid.event_webhook_public_key",
        "categories.NAME.opt_out",
        "channels.NAME.providers",
    ):
        assert f"| `{key}` |" in text, key


def test_config_reference_prints_the_same() -> None:
    done = CliRunner().invoke(app, ["config", "reference"])
    assert done.exit_code == 0
    assert done.output == reference()
