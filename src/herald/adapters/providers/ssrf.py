"""The SSRF guard for every URL a user controls (webhook URLs, Web Push endpoints).

A user-supplied URL must never make herald talk to itself, to the cloud metadata service or to
anything else on an internal network. The guard works in two steps:

1. :meth:`SsrfGuard.vet` parses the URL with the same parser aiohttp uses (``yarl``), accepts
   only ``http``/``https``, refuses hosts that are not a canonical IP literal or a proper DNS
   name (``http://2130706433/``, ``http://0x7f.1/``, ``http://127.1/``, zone ids, stray
   characters), resolves the name once with ``loop.getaddrinfo`` and refuses the URL when *any*
   address is loopback, private, link-local (``169.254.169.254``), unspecified, multicast,
   reserved, carrier-grade NAT (``100.64.0.0/10``), site-local, or an IPv6 form that embeds
   such an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, 6to4, Teredo, NAT64).
2. The vetted addresses are *pinned*: the aiohttp connector built by :meth:`SsrfGuard.connector`
   uses :class:`PinnedResolver`, which answers only from the pins and never resolves on its own.
   A DNS answer that changes between the check and the connection (DNS rebinding) therefore
   cannot redirect the connection; an unpinned host fails to connect.

Redirects are never followed by aiohttp (callers pass ``allow_redirects=False``); a caller that
follows one vets the ``Location`` again, so a redirect to loopback is refused like any other URL.

A refused URL raises :class:`BlockedAddressError`, a :class:`PermanentDeliveryError` with
``code="blocked_address"``.

Exceptions for operators and tests: ``allow_private`` turns the address checks off (schemes and
host syntax are still checked); ``allowed_hosts`` lists ``host`` or ``host:port`` authorities
exempt from the address checks (``127.0.0.1:8080`` for a loopback test receiver);
``allowed_networks`` lists CIDR blocks whose addresses pass (an internal webhook range).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from herald.domain.errors import PermanentDeliveryError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# getaddrinfo's result rows: (family, type, proto, canonname, sockaddr)
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]
Resolve = Callable[[str, int], Awaitable[Sequence[AddrInfo]]]

BLOCKED = "blocked_address"
_SCHEMES = frozenset({"http", "https"})
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class BlockedAddressError(PermanentDeliveryError):
    """The URL points somewhere herald must not connect to."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code=BLOCKED)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client address
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_blocked_ip(ip: IPAddress) -> bool:
    """Whether ``ip`` is anything but an ordinary public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return True
        if ip.ipv4_mapped is not None:  # the connection goes to the IPv4 address itself
            return is_blocked_ip(ip.ipv4_mapped)
        inner = _embedded_ipv4(ip)
        if inner is not None and is_blocked_ip(inner):
            return True
        if ip.is_site_local:
            return True
    elif ip in _CGNAT:
        return True
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_host_syntax(host: str) -> IPAddress | None:
    """Return the IP for an IP literal, None for a DNS name; raise for anything else."""
    ip = _ip_literal(host)
    if ip is not None:
        return ip
    if "%" in host:
        raise BlockedAddressError("host has a zone id or escaped characters")
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if not name or not all(_LABEL.match(label) for label in labels):
        raise BlockedAddressError("host is not a valid DNS name or IP address")
    # ``2130706433``, ``0x7f.1``, ``127.1``, ``017700000001``: socket maps these onto IPv4
    # addresses, and a name whose last label is numeric is no DNS name (RFC 3696 §2).
    if _NUMERIC_LABEL.match(labels[-1]):
        raise BlockedAddressError("host is a non-canonical numeric address")
    return None


@dataclass(frozen=True, slots=True)
class VettedUrl:
    """A URL that passed the guard, with the addresses a connection may use."""

    url: URL
    host: str
    port: int
    addresses: tuple[str, ...]


async def _default_resolve(host: str, port: int) -> Sequence[AddrInfo]:
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)


class PinnedResolver(AbstractResolver):
    """An aiohttp resolver that only answers from addresses the guard vetted.

    The most recently vetted ``max_hosts`` names are kept; a name evicted between its check and
    its connection fails to connect (a transient error), it is never looked up again here.
    """

    def __init__(self, max_hosts: int = 10_000) -> None:
        self._pins: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._max_hosts = max_hosts

    def pin(self, host: str, addresses: tuple[str, ...]) -> None:
        # Every value stored here passed the guard, so concurrent sends to one host may
        # overwrite each other's pins without ever exposing an unvetted address.
        key = host.lower().rstrip(".")
        self._pins[key] = addresses
        self._pins.move_to_end(key)
        while len(self._pins) > self._max_hosts:
            self._pins.popitem(last=False)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self._pins.get(host.lower().rstrip("."))
        if not addresses:
            # Never fall back to real DNS: that is the rebinding hole this class closes.
            raise OSError(f"host {host!r} was not vetted by the SSRF guard")
        results: list[ResolveResult] = []
        for addr in addresses:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            results.append(
                {"hostname": host, "host": addr, "port": port, "family": fam, "proto": 0, "flags": 0}
            )
        return results

    async def close(self) -> None:
        self._pins.clear()


class SsrfGuard:
    """Vets URLs and builds connectors that only reach vetted addresses."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        allowed_hosts: Iterable[str] = (),
        allowed_networks: Iterable[str] = (),
        resolve: Resolve | None = None,
    ) -> None:
        self.allow_private = allow_private
        self._allowed_hosts = {_parse_authority(a) for a in allowed_hosts}
        self._allowed_networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in allowed_networks
        )
        self._resolve: Resolve = resolve or _default_resolve
        self.resolver = PinnedResolver()

    def connector(self, **kwargs: Any) -> aiohttp.TCPConnector:
        """A connector that connects only to pinned addresses (no DNS cache of its own)."""
        return aiohttp.TCPConnector(resolver=self.resolver, use_dns_cache=False, **kwargs)

    def host_allowed(self, url: URL) -> bool:
        host = (url.host or "").lower().rstrip(".")
        return (host, None) in self._allowed_hosts or (host, url.port) in self._allowed_hosts

    def _address_ok(self, ip: IPAddress) -> bool:
        if self.allow_private or not is_blocked_ip(ip):
            return True
        return any(ip.version == net.version and ip in net for net in self._allowed_networks)

    async def vet(self, raw_url: str | URL) -> VettedUrl:
        """Check ``raw_url`` and pin its addresses; raise :class:`BlockedAddressError`."""
        try:
            url = raw_url if isinstance(raw_url, URL) else URL(raw_url)
        except (ValueError, TypeError):
            raise BlockedAddressError("not a valid URL") from None
        if url.scheme not in _SCHEMES:
            raise BlockedAddressError(f"scheme {url.scheme!r} is not allowed (http or https only)")
        host = url.host
        if not host or url.port is None:
            raise BlockedAddressError("URL has no host")
        literal = _check_host_syntax(host)
        exempt = self.host_allowed(url)
        if literal is not None:
            if not exempt and not self._address_ok(literal):
                raise BlockedAddressError("address is not public")
            return VettedUrl(url, host, url.port, (str(literal),))
        try:
            infos = await self._resolve(host, url.port)
        except (OSError, UnicodeError) as exc:
            raise BlockedAddressError(f"host does not resolve: {type(exc).__name__}") from None
        addresses: list[str] = []
        for info in infos:
            ip = _ip_literal(str(info[4][0]))
            if ip is None:
                raise BlockedAddressError("host resolved to something that is not an IP address")
            # One bad address refuses the whole name: a client that tries addresses in turn
            # (happy eyeballs) could otherwise end up on the internal one.
            if not exempt and not self._address_ok(ip):
                raise BlockedAddressError("host resolves to an address that is not public")
            if str(ip) not in addresses:
                addresses.append(str(ip))
        if not addresses:
            raise BlockedAddressError("host has no address")
        pinned = tuple(addresses)
        self.resolver.pin(host, pinned)
        return VettedUrl(url, host, url.port, pinned)


def _parse_authority(value: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:  # a bare name, IPv4 address or unbracketed IPv6 address
        host, port = value, ""
    if port and not port.isdigit():
        raise ValueError(f"allowed host {value!r} has an invalid port")
    return host.rstrip("."), int(port) if port else None
