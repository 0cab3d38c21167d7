"""The ``chat`` provider: Slack, Discord, Teams, Telegram, Mattermost and the rest through Apprise.

The user's address is one Apprise URL (``slack://…``, ``discord://…``, ``workflows://…`` for
Teams, ``tgram://…``, ``jsons://host/path``). Apprise is a blocking library (``requests``), so
every call into it runs on this provider's own bounded :class:`ThreadPoolExecutor`
(``max_workers``) through ``loop.run_in_executor``; the event loop only awaits. Apprise's own
thread pools are kept out of the way: the asset turns ``async_mode`` and ``service_timeout`` off,
so a send runs start to finish on the worker that picked it up and the pool bound holds.

One send:

1. The scheme must be in ``allowed_schemes``, else ``blocked_address`` (permanent). An address
   that is not a URL at all is a dead address (``invalid_url``).
2. On a worker: ``Apprise().add(url)`` must accept it and yield exactly one service (Apprise
   splits a string on commas and spaces, so ``"json://a json://b"`` would be two); else dead
   address ``invalid_url``. A scheme allowed by configuration whose plugin this installation
   cannot run (a missing optional dependency) is a configuration error (``scheme_unavailable``),
   not the user's fault. The service is then hardened, whatever its URL asked for: no redirects,
   no Apprise-level retries (herald retries), not ``optional`` (an optional service reports
   success even when it failed), no Matrix server discovery (it would connect to a host named by
   a ``.well-known`` document), certificate checks on unless ``allow_insecure_tls``, connect and
   read timeouts capped.
3. Unless the scheme is in ``fixed_host_schemes`` (plugins that only ever talk to their vendor's
   own hosts: Slack, Discord, Telegram), the host the service will connect to (``json://``,
   ``mmost://``, ``matrix://``, ``workflows://``…) goes through :class:`.ssrf.SsrfGuard`, the
   webhook channel's guard: loopback, private, link-local, metadata and the other internal
   ranges are refused (``blocked_address``) unless listed in ``allowed_hosts`` /
   ``allowed_networks``. A scheme that is neither fixed-host nor has a resolvable host fails
   closed (blocked), so adding a scheme to ``allowed_schemes`` never opens an SSRF hole by itself.
4. On a worker: ``notify()``. The whole send (queueing for a worker included) is bounded by
   ``timeout``.

Classification. Apprise 2.x returns an ``AppriseResult`` whose per-attempt log entries are
captured per call (a context variable, so concurrent sends on other workers never mix their
lines, which the process-wide ``apprise.LogCapture`` would). Those lines are the only signal:

* success → receipt ``sent``;
* ``error=NNN`` (what ~160 of the ~180 plugin modules log for a non-2xx answer; the last one
  wins when a plugin made several requests): 410 → dead address, 408/425/429/5xx → transient,
  other 4xx → permanent, code ``NNN``;
* "connection error" (what the plugins log for any ``requests`` exception: refused, reset,
  DNS failure, TLS failure, read timeout) → transient ``connection``;
* a plugin that raised → permanent ``plugin_error``;
* any other failure (a plugin that got a 200 carrying an API error, a message the plugin refused)
  → permanent ``unclassified``: a user's broken URL must not look like a provider outage;
* our own deadline passing → transient ``timeout``, ``ambiguous`` when a worker had started
  (the service may have acted on it); ``busy`` when every worker was taken and it never started.

Limits, honestly:

* The classification reads English log text written by ~180 independent plugins. The phrases
  above cover the common HTTP plugins, but a plugin that words its failure differently falls into
  ``unclassified`` (permanent). Apprise only logs at WARNING here (DEBUG would carry payloads),
  so a connection error cannot be told apart from a read timeout after the request was sent:
  ``connection`` failures are never marked ambiguous even though some were.
* A 404 from Discord or Slack usually means the webhook was deleted, but it is reported as
  permanent, not as a dead address; only 410 deactivates the address.
* The SSRF check resolves the host once and refuses it if any address is internal, but the HTTP
  request is made by Apprise (``requests``), which resolves the name again: unlike the webhook
  channel, a DNS answer that changes between the check and the connection (rebinding) is not
  pinned. Redirects are off, so a redirect cannot be used to the same end.
* A worker that outlives the deadline keeps its thread until Apprise's socket timeouts end the
  request (each read is capped, a trickling server can stretch it); it keeps occupying its slot,
  so the pool stays bounded and later sends queue (and report ``busy`` if they never start).
* Logs: herald's own lines show only the scheme (and a self-hosted service's host). Apprise's
  WARNING lines still propagate; they name no tokens in the plugins checked, but ~180 plugins
  were not all audited. The ``apprise`` logger is set to WARNING unless the operator chose a
  lower level: higher would hide the lines classification needs, an inherited DEBUG would log
  whole URLs and payloads. urllib3's own DEBUG line (``POST /path?query``) is not ours to
  silence. The failure details herald stores have every token-like part of the address redacted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote

import apprise
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator
from yarl import URL

from herald.adapters.providers.ssrf import BlockedAddressError, Resolve, SsrfGuard
from herald.domain.errors import (
    ConfigurationError,
    DeadAddressError,
    DeliveryError,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, SendReceipt

log = structlog.get_logger("herald.providers.chat")

T = TypeVar("T")

DEFAULT_SCHEMES: tuple[str, ...] = (
    "slack",
    "discord",
    "workflow",  # Microsoft Teams via Power Automate workflows (Apprise 2.2 has no ``msteams://``)
    "workflows",
    "tgram",
    "mmost",
    "mmosts",
    "rocket",
    "rockets",
    "matrix",
    "matrixs",
    "json",
    "jsons",
)
# Plugins verified to connect only to their vendor's own hosts (the URL's "host" is a token).
FIXED_HOST_SCHEMES: tuple[str, ...] = ("slack", "discord", "tgram")

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]{0,31})://", re.IGNORECASE)
_HTTP_STATUS = re.compile(r"\berror=(\d{3})\b")
_CONNECTION = re.compile(r"connection error", re.IGNORECASE)
_CRASHED = re.compile(r"raised an exception", re.IGNORECASE)
_SECRET_SPLIT = re.compile(r"[/:@?&=#,;+\s]+")
_FORMATS = frozenset({"text", "markdown", "html"})
_TYPES = frozenset({"info", "success", "warning", "failure"})

_plugins_lock = threading.Lock()
_plugins_loaded = threading.Event()


def _manager() -> Any:
    # Apprise's plugin registry: a process-wide singleton whose constructor and methods are
    # untyped, so it is handled as Any rather than silenced with type: ignore.
    registry: Any = apprise.NotificationManager
    return registry()


def load_plugins() -> None:
    """Import every Apprise plugin once, up front.

    Apprise imports its plugins lazily on the first URL it parses. Doing it here keeps that
    import off a send's path and lets us silence, narrowly, the one DeprecationWarning it raises
    on Python 3.11/3.12 (``imghdr``, imported by Apprise's PGP shim), which would otherwise fail
    the first parse under ``-W error`` and leave the registry half-loaded. ``catch_warnings`` is
    process-global state: this runs once, at provider construction (startup).
    """
    with _plugins_lock:
        if _plugins_loaded.is_set():
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"'imghdr' is deprecated", category=DeprecationWarning)
            _manager().load_modules()
        # Classification reads Apprise's WARNING lines, which are only captured if the logger
        # emits them, so its level is pinned to WARNING when unset or higher. Its DEBUG and INFO
        # lines carry whole URLs (query arguments unmasked) and payloads: an unset level is not
        # left to inherit DEBUG from the root logger. A lower level set by the operator is kept.
        apprise_logger = logging.getLogger(apprise.LOGGER_NAME)
        if apprise_logger.level == logging.NOTSET or apprise_logger.level > logging.WARNING:
            apprise_logger.setLevel(logging.WARNING)
        _plugins_loaded.set()


def _normalise_schemes(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        scheme = value.strip().lower().removesuffix("://")
        if not re.fullmatch(r"[a-z][a-z0-9+.-]{0,31}", scheme):
            raise ValueError(f"{value!r} is not a URL scheme")
        if scheme not in out:
            out.append(scheme)
    return out


class ChatConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Schemes users may register; anything else is refused as ``blocked_address``.
    allowed_schemes: list[str] = Field(default_factory=lambda: list(DEFAULT_SCHEMES))
    # Schemes whose plugin only talks to its vendor's fixed hosts: exempt from the SSRF host
    # check (their URL "host" is a token). Every other scheme's host is vetted.
    fixed_host_schemes: list[str] = Field(default_factory=lambda: list(FIXED_HOST_SCHEMES))
    # SSRF exceptions, as for the webhook channel: "host" or "host:port" authorities and CIDR
    # blocks that may be internal (a loopback test receiver, an on-premises Mattermost).
    allowed_hosts: list[str] = Field(default_factory=list)
    allowed_networks: list[str] = Field(default_factory=list)
    allow_private: bool = False
    # The whole send, waiting for a worker included.
    timeout: float = Field(default=15.0, gt=0, le=600)
    # Caps on Apprise's per-request socket timeouts (a URL may only lower them).
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=10.0, gt=0)
    max_workers: int = Field(default=8, ge=1, le=256)
    # Honour ``verify=no`` in a user's URL (self-signed on-premises servers).
    allow_insecure_tls: bool = False

    @field_validator("allowed_schemes", "fixed_host_schemes")
    @classmethod
    def _schemes(cls, values: list[str]) -> list[str]:
        return _normalise_schemes(values)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        SsrfGuard(allowed_hosts=values)  # raises ValueError on a malformed authority
        return values

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        SsrfGuard(allowed_networks=values)
        return values


@dataclass(slots=True)
class _Prepared:
    """One hardened Apprise service, ready to notify, and where it will connect."""

    apobj: apprise.Apprise
    service_name: str
    host: str | None
    port: int | None
    secure: bool


@dataclass(slots=True)
class _Outcome:
    ok: bool
    http_status: int | None = None
    connection_error: bool = False
    crashed: bool = False
    messages: list[str] = field(default_factory=list)


def scheme_of(address: str) -> str | None:
    match = _SCHEME.match(address.strip())
    return match.group(1).lower() if match else None


def _loggable(scheme: str, host: str | None = None) -> str:
    """What a log line may show of a chat URL: the scheme and, for self-hosted services, the host.

    Everything else (webhook ids, tokens, passwords, query arguments) may be a secret.
    """
    return f"{scheme}://{host}/***" if host else f"{scheme}://***"


def _redactor(address: str, keep: Iterable[str]) -> Callable[[str], str]:
    """Replace every token-like piece of the address (webhook ids, tokens, passwords)."""
    kept = {k.lower() for k in keep if k}
    pieces: set[str] = set()
    for raw in _SECRET_SPLIT.split(address):
        for piece in (raw, unquote(raw)):
            if len(piece) >= 4 and piece.lower() not in kept:
                pieces.add(piece)
    ordered = sorted(pieces, key=len, reverse=True)

    def redact(text: str) -> str:
        for piece in ordered:
            text = text.replace(piece, "***")
        return text

    return redact


def _render(message: OutboundMessage) -> tuple[str, str, str, str]:
    content = message.content
    body = content.get("text") or content.get("body")
    if not isinstance(body, str) or not body.strip():
        raise PermanentDeliveryError("chat message has no text", code="empty_message")
    title = content.get("title")
    fmt = content.get("format")
    kind = content.get("type")
    return (
        body,
        title if isinstance(title, str) else "",
        fmt if isinstance(fmt, str) and fmt in _FORMATS else "text",
        kind if isinstance(kind, str) and kind in _TYPES else "info",
    )


class ChatProvider:
    name = "chat"

    def __init__(self, config: ChatConfig | None = None, *, resolve: Resolve | None = None) -> None:
        self.config = config or ChatConfig()
        load_plugins()
        manager = _manager()
        unknown = [s for s in self.config.allowed_schemes if s not in manager]
        if unknown:
            raise ConfigurationError(
                f"Apprise {apprise.__version__} has no plugin for {', '.join(unknown)}",
                field="chat.allowed_schemes",
            )
        self._allowed = frozenset(self.config.allowed_schemes)
        self._fixed_host = frozenset(self.config.fixed_host_schemes)
        self.guard = SsrfGuard(
            allow_private=self.config.allow_private,
            allowed_hosts=self.config.allowed_hosts,
            allowed_networks=self.config.allowed_networks,
            resolve=resolve,
        )
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.config.max_workers, thread_name_prefix="herald-chat"
            )
        return self._executor

    async def send(self, message: OutboundMessage) -> SendReceipt:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout
        address = message.address.strip()
        scheme = scheme_of(address)
        if scheme is None:
            raise DeadAddressError("address is not an Apprise URL", code="invalid_url")
        try:
            if scheme not in self._allowed:
                raise BlockedAddressError(f"chat scheme {scheme!r} is not allowed")
            body, title, fmt, kind = _render(message)
            prepared = await self._on_worker(self._prepare, address, scheme, deadline=deadline, sending=False)
            if scheme not in self._fixed_host:
                await self._vet(prepared, deadline)
        except BlockedAddressError as exc:
            log.warning(
                "chat.blocked", delivery_id=message.delivery_id, url=_loggable(scheme), reason=exc.detail
            )
            raise
        outcome = await self._on_worker(
            self._notify, prepared.apobj, body, title, fmt, kind, deadline=deadline, sending=True
        )
        shown = _loggable(scheme, None if scheme in self._fixed_host else prepared.host)
        if outcome.ok:
            log.debug("chat.sent", delivery_id=message.delivery_id, service=prepared.service_name, url=shown)
            return SendReceipt(code="sent", detail=prepared.service_name)
        redact = _redactor(address, (scheme, prepared.host or ""))
        error = self._classify(outcome, prepared.service_name, redact)
        log.info("chat.failed", delivery_id=message.delivery_id, service=prepared.service_name,
                 url=shown, outcome=error.outcome, code=error.code)
        raise error

    async def _on_worker(self, fn: Callable[..., T], *args: Any, deadline: float, sending: bool) -> T:
        """Run ``fn`` on the pool, giving up (not waiting) when ``deadline`` passes."""
        loop = asyncio.get_running_loop()
        started = threading.Event()

        def job() -> T:
            started.set()
            return fn(*args)

        future = loop.run_in_executor(self._pool(), job)
        try:
            # On timeout wait_for cancels the future; a job still queued is then never run.
            return await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
        except TimeoutError:
            if not started.is_set():
                raise TransientDeliveryError(
                    f"no chat worker free within {self.config.timeout}s", code="busy"
                ) from None
            raise TransientDeliveryError(
                f"no answer within {self.config.timeout}s"
                + (" (the service may have acted on it)" if sending else ""),
                code="timeout",
                ambiguous=sending,
            ) from None

    def _prepare(self, address: str, scheme: str) -> _Prepared:
        """On a worker: parse the URL into exactly one hardened Apprise service."""
        plugin = _manager()[scheme]
        if not getattr(plugin, "enabled", False):
            raise ProviderConfigError(
                f"the Apprise plugin for {scheme}:// cannot run on this installation",
                code="scheme_unavailable",
            )
        asset = apprise.AppriseAsset(
            async_mode=False,  # run on this worker, not on Apprise's shared pool
            service_timeout=0,  # no Apprise deadline: it would hand the call to its own pool
            http_redirects=False,
            storage_mode="memory",  # never write Apprise's persistent store to disk
            secure_logging=True,
        )
        apobj = apprise.Apprise(asset=asset)
        try:
            added = apobj.add(address)
        except Exception as exc:  # a plugin that raises while parsing: the URL is unusable
            raise DeadAddressError(f"Apprise cannot parse the URL ({type(exc).__name__})",
                                   code="invalid_url") from None
        if not added or len(apobj) != 1:
            raise DeadAddressError("not a valid Apprise URL (exactly one is expected)", code="invalid_url")
        service: Any = apobj[0]  # NotifyBase; its per-plugin attributes are untyped
        if scheme not in service.schemas():
            raise DeadAddressError("the URL does not parse as its own scheme", code="invalid_url")
        service.redirects = False
        service.retry = 0
        service.optional = False
        if hasattr(service, "discovery"):
            service.discovery = False
        if not self.config.allow_insecure_tls:
            service.verify_certificate = True
        cfg = self.config
        service.socket_connect_timeout = min(float(service.socket_connect_timeout), cfg.connect_timeout)
        service.socket_read_timeout = min(float(service.socket_read_timeout), cfg.read_timeout)
        host = getattr(service, "host", None)
        port = getattr(service, "port", None)
        return _Prepared(
            apobj=apobj,
            service_name=str(getattr(service, "service_name", scheme)),
            host=host if isinstance(host, str) and host else None,
            port=port if isinstance(port, int) and not isinstance(port, bool) else None,
            secure=bool(getattr(service, "secure", False)),
        )

    async def _vet(self, prepared: _Prepared, deadline: float) -> None:
        if prepared.host is None:
            raise BlockedAddressError("the URL names no host to check")
        host = prepared.host.removeprefix("[").removesuffix("]")
        try:
            target = URL.build(scheme="https" if prepared.secure else "http", host=host, port=prepared.port)
        except (ValueError, TypeError):
            raise BlockedAddressError("host is not a valid DNS name or IP address") from None
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self.guard.vet(target), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise TransientDeliveryError("resolving the chat host timed out", code="timeout") from None

    @staticmethod
    def _notify(apobj: apprise.Apprise, body: str, title: str, fmt: str, kind: str) -> _Outcome:
        """On a worker: send, and read the outcome out of the captured log lines."""
        result = apobj.notify(body=body, title=title, notify_type=kind, body_format=fmt)
        try:
            outcome = _Outcome(ok=bool(result) and result.success_count > 0)
            lines = [entry.message for entry in result.call_logs()]
            for service_result in result.results:
                for attempt in service_result.attempts:
                    lines.extend(entry.message for entry in attempt.logs)
            for line in lines:
                if (match := _HTTP_STATUS.search(line)) is not None:
                    outcome.http_status = int(match.group(1))
                if _CONNECTION.search(line):
                    outcome.connection_error = True
                if _CRASHED.search(line):
                    outcome.crashed = True
            outcome.messages = lines
            return outcome
        finally:
            result.close()

    @staticmethod
    def _classify(outcome: _Outcome, service: str, redact: Callable[[str], str]) -> DeliveryError:
        last = redact(outcome.messages[-1])[:200] if outcome.messages else ""
        detail = f"{service}: " + (last or "failed without a reason")
        status = outcome.http_status
        if status is not None and not 200 <= status < 300:
            if status == 410:
                return DeadAddressError(detail, code="410")
            if status in (408, 425, 429) or status >= 500:
                return TransientDeliveryError(detail, code=str(status))
            return PermanentDeliveryError(detail, code=str(status))
        if outcome.connection_error:
            return TransientDeliveryError(detail, code="connection")
        if outcome.crashed:
            return PermanentDeliveryError(detail, code="plugin_error")
        return PermanentDeliveryError(detail, code="unclassified")

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # Queued sends are dropped; running ones finish on their own (bounded by the
            # socket timeouts) without holding up shutdown.
            executor.shutdown(wait=False, cancel_futures=True)
