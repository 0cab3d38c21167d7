"""What the Kafka adapters share: the ``kafka://`` / ``kafkas://`` URL, the client options built
from it, and the translation of aiokafka's errors at the boundary.

``kafka://host:9092,host2:9092`` is a list of bootstrap servers (port 9092 when left out);
``kafkas://`` connects with TLS (the system's CA store, or ``ssl_cafile``). Credentials in the
URL (``kafka://user:password@host``) or given as keys select SASL (``PLAIN`` unless a mechanism
is named: ``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

try:
    from aiokafka import errors as kafka_errors
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    from herald.domain.errors import ConfigurationError

    raise ConfigurationError(
        "a kafka:// URL is configured but aiokafka is not installed: pip install 'herald[kafka]'"
    ) from exc

from herald.domain.errors import ConfigurationError, HeraldError, ServiceUnavailable

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# What a broker or its connection can throw at us; everything else is a bug and propagates.
KAFKA_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to authenticate (never logged: ``password``)."""

    servers: tuple[str, ...]
    tls: bool = False
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = None
    ssl_cafile: str | None = None

    @property
    def bootstrap(self) -> str:
        return ",".join(self.servers)

    def client_args(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient."""
        args: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
        if self.sasl_mechanism is not None:
            args["security_protocol"] = "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
            args["sasl_mechanism"] = self.sasl_mechanism
            args["sasl_plain_username"] = self.username
            args["sasl_plain_password"] = self.password
        elif self.tls:
            args["security_protocol"] = "SSL"
        if self.tls:
            args["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        return args


def parse_kafka_url(
    url: str,
    *,
    key: str,
    sasl_mechanism: str | None = None,
    username: str | None = None,
    password: str | None = None,
    ssl_cafile: str | None = None,
) -> KafkaConnection:
    """Parse ``url`` (named ``key`` in errors); explicit options win over the URL's credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("kafka", "kafkas"):
        raise ConfigurationError(f"{key}: expected a kafka:// or kafkas:// URL")
    rest = rest.split("/", 1)[0].split("?", 1)[0]
    userinfo, at, hosts = rest.rpartition("@")
    if at:
        user, _, secret = userinfo.partition(":")
        username = username or unquote(user) or None
        password = password or unquote(secret) or None
    servers = []
    for part in hosts.split(","):
        host = part.strip()
        if not host:
            continue
        name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not colon:
            name, port = host, "9092"
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"{key}: {host!r} is not host:port")
        servers.append(f"{name}:{port}")
    if not servers:
        raise ConfigurationError(f"{key}: names no broker (kafka://host:9092)")
    mechanism = sasl_mechanism.upper() if sasl_mechanism else ("PLAIN" if username else None)
    if mechanism is not None:
        if mechanism not in SASL_MECHANISMS:
            raise ConfigurationError(f"{key}: SASL mechanism must be one of {', '.join(SASL_MECHANISMS)}")
        if not username or password is None:
            raise ConfigurationError(f"{key}: SASL needs a username and a password")
    return KafkaConnection(
        servers=tuple(servers),
        tls=scheme == "kafkas",
        sasl_mechanism=mechanism,
        username=username,
        password=password,
        ssl_cafile=ssl_cafile,
    )


def kafka_error(exc: BaseException, doing: str) -> HeraldError:
    """Translate an aiokafka error at the boundary."""
    if isinstance(
        exc, kafka_errors.TopicAuthorizationFailedError | kafka_errors.GroupAuthorizationFailedError
    ):
        return ConfigurationError(f"Kafka refused access ({doing}): {type(exc).__name__}")
    if isinstance(exc, kafka_errors.IllegalSaslStateError | kafka_errors.UnsupportedSaslMechanismError):
        return ConfigurationError(f"Kafka refused the credentials ({doing})")
    reason = str(exc) or type(exc).__name__
    return ServiceUnavailable(f"Kafka unavailable ({doing}): {reason}")


async def ensure_topics(conn: KafkaConnection, topics: dict[str, int], *, timeout: float = 10.0) -> None:
    """Create the topics missing from the cluster (name -> partitions); existing ones are kept
    as they are. Raises ServiceUnavailable when the cluster cannot be reached."""

    admin = AIOKafkaAdminClient(**conn.client_args(), request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout))
        missing = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
        if missing:
            # TopicAlreadyExists: another process created it meanwhile.
            with contextlib.suppress(kafka_errors.TopicAlreadyExistsError):
                await asyncio.wait_for(admin.create_topics(missing), timeout)
    except KAFKA_ERRORS as exc:
        raise kafka_error(exc, f"creating topics {', '.join(topics)}") from exc
    finally:
        with contextlib.suppress(*KAFKA_ERRORS):
            await admin.close()


async def lost_offsets(consumer: Any, committed: dict[Any, int]) -> list[Any]:
    """The partitions for which this member committed an offset that the group no longer has.

    An active member's offsets never expire, so this means the cluster lost its state (a broker
    restarted empty): the partition's log started again, and the position this member kept
    would skip the new records below it. The caller seeks those partitions to the beginning
    (what was already accepted comes again and is absorbed by idempotency)."""
    lost = []
    for tp, offset in committed.items():
        if offset <= 0 or tp not in consumer.assignment():
            continue
        with contextlib.suppress(*KAFKA_ERRORS):
            if await consumer.committed(tp) is None:
                lost.append(tp)
    return lost
