"""The composition root's providers: the registry, the check of every ``[providers.NAME]``
table, and each channel's provider (one, a failover chain, or push dispatched by device kind).

Providers with their own dependencies (an SDK, HTTP/2) are imported only when configured:
:data:`PROVIDER_EXTRAS` names the extra each needs, and a missing one is a ConfigurationError
that says what to install. :mod:`herald.bootstrap` re-exports the public names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from herald.adapters.providers.composite import FailoverProvider, PushDispatcher, RateLimit
from herald.adapters.providers.console import ConsoleProvider
from herald.adapters.providers.in_app import InAppProvider
from herald.adapters.providers.smtp import SmtpConfig, SmtpProvider
from herald.config import ChannelConfig, Settings
from herald.domain.errors import ConfigurationError
from herald.inbox import InboxHub
from herald.ports import Cache, Provider
from herald.services.deliver import ChannelPool

ProviderFactory = Callable[[Settings, InboxHub], Provider]

# Providers whose SDKs are not in the default install: the extra and the packages it brings.
PROVIDER_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ses": ("ses", ("botocore",)),
    "chat": ("chat", ("apprise",)),
    "apns": ("apns", ("httpx", "h2")),
}

_MODULES = {
    "sendgrid": ("sendgrid", "SendGridConfig", "SendGridProvider"),
    "ses": ("ses", "SesConfig", "SesProvider"),
    "twilio": ("twilio", "TwilioConfig", "TwilioProvider"),
    "fcm": ("fcm", "FcmConfig", "FcmProvider"),
    "apns": ("apns", "ApnsConfig", "ApnsProvider"),
    "webpush": ("webpush", "WebPushConfig", "WebPushProvider"),
    "webhook": ("webhook", "WebhookConfig", "WebhookProvider"),
    "chat": ("chat", "ChatConfig", "ChatProvider"),
}

PROVIDER_MODULES = _MODULES  # name -> (module, config class, provider class)

_PUSH_KINDS = ("apns", "fcm", "webpush")


def _section(settings: Settings, name: str) -> dict[str, Any]:
    extra = settings.providers.model_extra or {}
    raw = extra.get(name)
    if raw is None:
        raise ConfigurationError(
            f"providers.{name}: a channel uses it but there is no [providers.{name}] table"
        )
    if not isinstance(raw, dict):
        raise ConfigurationError(f"providers.{name}: must be a table")
    return raw


def _validated(name: str, model: type[BaseModel], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigurationError(f"configuration key providers.{name}.{key}: {err['msg']}") from None


def _external(name: str) -> ProviderFactory:
    """Providers with their own dependencies are imported only when configured."""

    def factory(settings: Settings, _hub: InboxHub) -> Provider:
        raw = _section(settings, name)
        module = import_provider_module(name)
        config_cls, provider_cls = (getattr(module, n) for n in _MODULES[name][1:])
        provider: Provider = provider_cls(_validated(name, config_cls, raw))
        return provider

    return factory


def import_provider_module(name: str) -> Any:
    """The provider's adapter module; ConfigurationError naming the extra it needs if missing."""
    extra, packages = PROVIDER_EXTRAS.get(name, (None, ()))
    try:
        for package in packages:
            importlib.import_module(package)
        return importlib.import_module(f"herald.adapters.providers.{_MODULES[name][0]}")
    except ModuleNotFoundError as exc:
        if extra is not None:
            raise ConfigurationError(
                f"providers.{name} needs the '{extra}' extra ({exc.name} is not installed): "
                f"pip install 'herald[{extra}]'"
            ) from None
        raise ConfigurationError(
            f"providers.{name}: a dependency is missing ({exc.name}); reinstall herald"
        ) from None


def smtp_config(settings: Settings) -> SmtpConfig:
    """SMTP needs no table: without one it speaks to a relay on 127.0.0.1:25."""
    raw = (settings.providers.model_extra or {}).get("smtp", {})
    if not isinstance(raw, dict):
        raise ConfigurationError("providers.smtp: must be a table")
    config: SmtpConfig = _validated("smtp", SmtpConfig, raw)
    return config


def _provider_factories() -> dict[str, ProviderFactory]:
    factories: dict[str, ProviderFactory] = {
        "console": lambda s, _hub: ConsoleProvider(s.providers.console.path),
        "smtp": lambda s, _hub: SmtpProvider(smtp_config(s)),
        "in_app": lambda _s, hub: InAppProvider(hub),
    }
    for name in _MODULES:
        factories[name] = _external(name)
    return factories


def validate_provider_tables(settings: Settings) -> None:
    """Every ``[providers.NAME]`` table is checked at start, whether a channel uses it yet or
    not: a bad value fails now, naming its key, not the day a channel is pointed at it. (A
    provider whose extra is not installed is checked only where a channel uses it.)"""
    for name, raw in (settings.providers.model_extra or {}).items():
        if name == "smtp":
            smtp_config(settings)
        elif name in _MODULES:
            try:
                module = import_provider_module(name)
            except ConfigurationError:
                continue
            if not isinstance(raw, dict):
                raise ConfigurationError(f"providers.{name}: must be a table")
            _validated(name, getattr(module, _MODULES[name][1]), raw)


def _channel_provider(channel: str, ch: ChannelConfig, chosen: list[Provider], cache: Cache) -> Provider:
    """One provider per channel: push dispatches by device kind; others fail over in order."""
    if channel == "push" and any(p.name in _PUSH_KINDS for p in chosen):
        by_kind = {p.name: p for p in chosen if p.name in _PUSH_KINDS}
        others = [p for p in chosen if p.name not in _PUSH_KINDS]
        return PushDispatcher(by_kind, fallback=others[0] if others else None)
    if len(chosen) == 1 and not ch.rate_limits:
        return chosen[0]
    rates = {name: RateLimit.parse(rate) for name, rate in ch.rate_limits.items()}
    return FailoverProvider(
        chosen, cache=cache, rates=rates, threshold=ch.breaker_threshold, open_seconds=ch.breaker_open_seconds
    )


def build_pools(
    settings: Settings, hub: InboxHub, cache: Cache, providers: Mapping[str, Provider] | None = None
) -> tuple[dict[str, Provider], dict[str, ChannelPool]]:
    """The providers every enabled channel names (``providers`` overrides some by name: tests)
    and each channel's send pool; every provider table is checked first."""
    factories = _provider_factories()
    validate_provider_tables(settings)
    built: dict[str, Provider] = dict(providers or {})
    pools: dict[str, ChannelPool] = {}
    for channel, ch in settings.channels.items():
        if not ch.enabled:
            continue
        chosen: list[Provider] = []
        for name in ch.providers:
            if name not in built:
                factory = factories.get(name)
                if factory is None:
                    raise ConfigurationError(
                        f"channels.{channel}.providers: unknown provider {name!r}; "
                        f"known: {', '.join(sorted(factories))}"
                    )
                built[name] = factory(settings, hub)
            chosen.append(built[name])
        pools[channel] = ChannelPool(
            channel=channel,
            providers=[_channel_provider(channel, ch, chosen, cache)],
            concurrency=ch.concurrency,
            reserved_high=min(ch.reserved_high, ch.concurrency - 1),
            min_rank=ch.lanes[0].rank,
            max_rank=ch.lanes[-1].rank,
        )
    return built, pools
