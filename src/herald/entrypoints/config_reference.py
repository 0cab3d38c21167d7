"""The configuration reference, generated from the settings classes (``herald config reference``).

Every key with its type, default, environment variable and description. A description is the
field's ``description`` when it has one, else the comment written beside or above the field in
its class (the house style of config.py and the providers' config classes), else a note from
``_FALLBACK``. ``docs/configuration.md`` is this output; ``tests/unit/test_config_reference.py``
fails when they differ (regenerate with ``herald config reference > docs/configuration.md``).
"""

from __future__ import annotations

import enum
import importlib
import inspect
import json
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from herald.bootstrap import PROVIDER_EXTRAS, PROVIDER_MODULES
from herald.config import CategoryConfig, ChannelConfig, ConsoleConfig, Settings

ENV_PREFIX = "HERALD_"
REGENERATE = "herald config reference > docs/configuration.md"


# Descriptions of keys whose class has no comment for them, by full key, then by name.
_KEYED = {
    "server.host": "listen address",
    "server.port": "listen port",
    "server.max_body_bytes": "largest request body accepted (413 above)",
    "server.public_url": "herald's address as users reach it: unsubscribe, preference and tracking links",
    "database.url": "sqlite:///PATH, or postgresql://USER@HOST/DB (the postgres extra)",
    "queue.url": "sql (the deliveries table is the queue), or amqp://… (the rabbitmq extra)",
    "queue.lease_seconds": "a claimed delivery returns to the queue if its sender has not finished by then",
    "queue.claim_batch": "deliveries claimed at once by a sender",
    "queue.idle_wait_seconds": "longest sleep of an idle poll (wake-ups end it sooner)",
    "cache.url": "memory (one process), or redis://… (the redis extra): dedup, budgets, rates shared",
    "worker.shutdown_grace_seconds": "on stop, time given to sends in flight",
    "events.rule_cache_seconds": "how long a routing rule read from the database is reused",
    "providers.smtp.from_address": "the sender address",
    "providers.ses.access_key_id": "static AWS keys; unset: botocore's chain (environment, files, role)",
    "providers.ses.secret_access_key": "with access_key_id (a secret: prefer the environment variable)",
    "providers.ses.session_token": "with temporary credentials",
    "providers.ses.from_address": "the sender address (a verified SES identity)",
    "providers.ses.configuration_set": "SES configuration set: event destinations for bounces and complaints",
    "providers.fcm.token_refresh_margin": "seconds before expiry at which the OAuth token is renewed",
    "providers.apns.team_id": "Apple developer team id",
    "providers.apns.key_id": "id of the .p8 token-signing key",
    "providers.apns.sandbox": "use the development APNs endpoint",
    "providers.apns.verify_tls": "check the APNs server's certificate (off only for an emulator)",
    "providers.apns.keepalive_seconds": "an idle HTTP/2 connection is closed after this long",
    "providers.webpush.vapid_private_key": "the VAPID private key (PEM or base64url; a secret)",
    "providers.webpush.vapid_subject": "mailto: or https: contact sent in the VAPID claim",
    "providers.webpush.default_ttl": "seconds a push service keeps an undelivered message",
    "providers.webpush.token_lifetime": "seconds a VAPID token is valid",
    "providers.webpush.allowed_hosts": 'endpoints exempt from the SSRF checks ("host" or "host:port")',
    "providers.webpush.allowed_networks": "CIDR blocks allowed although private",
    "providers.chat.allowed_networks": "CIDR blocks allowed although private",
    "providers.chat.read_timeout": "cap on a chat service's read timeout",
    "providers.chat.max_workers": "threads running Apprise's blocking sends",
}

_FALLBACK = {
    "timeout": "seconds before a request to the provider is abandoned (a transient failure, retried)",
    "connect_timeout": "seconds to establish a connection",
    "max_connections": "keep-alive connections to the provider",
    "base_url": "the provider's API address (an emulator's in tests)",
    "api_key": "the provider's API key (a secret: prefer the environment variable)",
    "auth_token": "the account's auth token (a secret: prefer the environment variable)",
    "account_sid": "the Twilio account SID (AC…)",
    "from_email": "the sender address",
    "from_name": "the sender's display name",
    "from_number": "the sender phone number (E.164), or use messaging_service_sid",
    "messaging_service_sid": "a Messaging Service (MG…) to send from instead of from_number",
    "region": "the AWS region of the SES endpoint",
    "signing_secret": "HMAC key of the Herald-Signature header (at least 16 characters)",
    "allow_private": "allow private, loopback and link-local destinations (off: SSRF guard)",
    "max_redirects": "redirects followed, each re-checked by the SSRF guard",
    "max_response_bytes": "response bytes read (kept as the attempt's detail)",
    "pool_size": "connections kept open",
    "user_agent": "the User-Agent header",
    "host": "address to connect to or listen on",
    "port": "TCP port",
    "username": "login user name",
    "password": "login password (a secret: prefer the environment variable)",
    "security": "none, starttls or tls",
    "validate_certs": "check the server's TLS certificate",
    "path": "file the console provider appends one JSON line per delivery to ('-' for stdout)",
    "url": "where the backend is",
    "secret": "signs user inbox tokens; generated and stored in the database when absent",
    "user_token_ttl_seconds": "lifetime of a user (inbox) token",
    "level": "log level",
    "json": "one JSON object per log line (otherwise key=value, coloured on a terminal)",
    "webhook_url": "ops alerts (dead letters, held channels) are POSTed here",
    "min_interval_seconds": "at most one alert of a kind this often",
    "ttl_seconds": "how long an Idempotency-Key is remembered",
    "dedup_window_seconds": "how long a notification's dedup_key is remembered",
    "default_category": "category of a notification that names none",
    "default_locale": "locale of templates and users that name none",
    "rules": "routing rules by event type, as the body of PUT /v1/rules/{event_type}; applied at start",
    "opt_out": "users may turn this category off",
    "priority": "default priority lane",
    "quiet_hours": "deliveries inside a user's quiet hours wait for their end",
    "digest": "users may choose a digest for this category",
    "providers": "provider names in failover order",
    "concurrency": "send slots",
    "enabled": "off: deliveries to this channel are skipped (channel_disabled)",
    "schedule": "delay before attempt 1, 2, 3 …; then the delivery is dead",
    "jitter": "random share added to each delay",
    "pool_size_db": "connections to PostgreSQL",
}


@dataclass(slots=True)
class Row:
    key: str
    type: str
    default: str
    env: str
    description: str


def _comments(cls: type) -> dict[str, str]:
    """Comments beside or just above each ``name: type`` line of a class body."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"\s+([a-z_][a-z0-9_]*)\s*:", line)
        if m:
            parts = list(above)
            trailing = re.search(r"\s#\s(.*)$", line)
            if trailing and "noqa" not in trailing.group(1) and "type: ignore" not in trailing.group(1):
                parts.append(trailing.group(1).strip())
            if parts:
                out[m.group(1)] = " ".join(parts)
        above = []
    return out


def _descriptions(cls: type[BaseModel]) -> dict[str, str]:
    found: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if isinstance(base, type) and issubclass(base, BaseModel) and base is not BaseModel:
            found.update(_comments(base))
    return found


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        optional = type(None) in args
        return " or ".join(names) + (" (optional)" if optional else "")
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "table"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if isinstance(ann, type):
        if issubclass(ann, enum.Enum):
            return " | ".join(str(m.value) for m in ann)
        if issubclass(ann, SecretStr):
            return "secret string"
        if issubclass(ann, bool):
            return "boolean"
        if issubclass(ann, int):
            return "integer"
        if issubclass(ann, float):
            return "number"
        if issubclass(ann, str):
            return "string"
        return ann.__name__
    return str(ann).replace("typing.", "")


def _bounds(info: FieldInfo) -> str:
    marks = []
    for m in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(m, attr, None)
            if value is not None:
                marks.append(f"{sign} {value}")
        pattern = getattr(m, "pattern", None)
        if pattern:
            marks.append(f"matching `{pattern}`")
    return (", " + ", ".join(marks)) if marks else ""


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, SecretStr):
        return "…"
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "unset"
    return f"`{json.dumps(_plain(value), ensure_ascii=False)}`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _model_of(ann: Any) -> type[BaseModel] | None:
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def rows(model: type[BaseModel], prefix: str, env: str) -> Iterator[Row]:
    notes = _descriptions(model)
    for name, info in model.model_fields.items():
        key = info.alias or name
        if _model_of(info.annotation) is not None:
            continue  # a section of its own
        description = (
            info.description or notes.get(name) or _KEYED.get(f"{prefix}{key}") or _FALLBACK.get(key, "")
        )
        yield Row(
            key=f"{prefix}{key}",
            type=_escape(_type_name(info.annotation) + _bounds(info)),
            default=_escape(_default(info)),
            env=f"{env}{key.upper()}",
            description=_escape(description),
        )


def _table(out: list[str], items: Iterator[Row]) -> None:
    out.append("| key | type | default | environment variable | description |")
    out.append("|---|---|---|---|---|")
    for r in items:
        out.append(f"| `{r.key}` | {r.type} | {r.default} | `{r.env}` | {r.description} |")
    out.append("")


def _section(
    out: list[str], title: str, model: type[BaseModel], prefix: str, env: str, intro: str = ""
) -> None:
    out.append(f"## `[{title}]`")
    out.append("")
    if intro:
        out.append(intro)
        out.append("")
    _table(out, rows(model, prefix, env))


def reference() -> str:
    """The whole reference, as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from the settings classes: do not edit. Regenerate with",
        f"     {REGENERATE} -->",
        "",
        "herald reads one TOML file (`herald.toml` in the working folder, or `--config FILE`, or",
        "`HERALD_CONFIG`) and then `HERALD_*` environment variables, which win over the file. Nested",
        "keys join with `__`: `[server] port` is `HERALD_SERVER__PORT`. A bad value stops herald at",
        "start with a message naming the key; `herald config check [FILE]` runs the same checks",
        "without starting anything.",
        "",
        "## Top level",
        "",
    ]
    top = [r for r in rows(Settings, "", ENV_PREFIX) if r.key not in {"categories", "channels", "providers"}]
    _table(out, iter(top))
    for name, info in Settings.model_fields.items():
        model = _model_of(info.annotation)
        if model is None or name == "providers":
            continue
        _section(out, name, model, f"{name}.", f"{ENV_PREFIX}{name.upper()}__")
    categories = Settings.model_fields["categories"].default_factory()  # type: ignore[call-arg,misc]
    channels = Settings.model_fields["channels"].default_factory()  # type: ignore[call-arg,misc]
    _section(
        out,
        "categories.NAME",
        CategoryConfig,
        "categories.NAME.",
        f"{ENV_PREFIX}CATEGORIES__NAME__",
        "One table per category. Defaults: "
        + ", ".join(f"`{n}`" for n in categories)
        + " (a table of the same name changes that category, others are added).",
    )
    _section(
        out,
        "channels.NAME",
        ChannelConfig,
        "channels.NAME.",
        f"{ENV_PREFIX}CHANNELS__NAME__",
        "One table per channel (" + ", ".join(f"`{n}`" for n in channels) + "); every channel "
        "sends through `console` (in-app through `in_app`) until it names providers.",
    )
    _section(
        out, "providers.console", ConsoleConfig, "providers.console.", f"{ENV_PREFIX}PROVIDERS__CONSOLE__"
    )
    # SMTP is built in (it needs no table of its own); the others are imported when configured.
    documented = {"smtp": ("smtp", "SmtpConfig", "SmtpProvider"), **PROVIDER_MODULES}
    for name, (module, cls_name, _provider) in documented.items():
        extra = PROVIDER_EXTRAS.get(name, (None, ()))[0]
        title = f"providers.{name}"
        guide = f"Guide: [docs/providers/{name}.md](providers/{name}.md)."
        try:
            cls = getattr(importlib.import_module(f"herald.adapters.providers.{module}"), cls_name)
        except ImportError:
            out += [f"## `[{title}]`", "", f"Needs `pip install 'herald[{extra}]'` (not installed here).", ""]
            continue
        needs = f" Needs the `{extra}` extra: `pip install 'herald[{extra}]'`." if extra else ""
        _section(out, title, cls, f"{title}.", f"{ENV_PREFIX}PROVIDERS__{name.upper()}__", guide + needs)
    return "\n".join(out).rstrip() + "\n"
