"""Delivery providers: sending one message, sending many in one call, reading status callbacks.

Implemented by ``adapters/providers`` (one module per provider, each speaking its real wire
protocol); tested against emulators of those protocols, not against fakes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol, runtime_checkable

from herald.domain.models import CallbackEvent, CallbackRequest, OutboundMessage, SendReceipt


class Provider(Protocol):
    """A delivery provider speaking its real wire protocol.

    ``send`` returns a receipt on acceptance and raises a subclass of
    :class:`herald.domain.errors.DeliveryError` otherwise; the class decides retry, failure,
    address deactivation or a configuration alert.
    """

    name: str

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Hand ``message`` to the provider once (no retry here: the deliver service and the
        domain's retry policy decide). Returns the provider's receipt (its code and message
        id, by which its status callbacks find the delivery again) when it accepted the message.

        Raises a :class:`herald.domain.errors.DeliveryError` otherwise, whose class decides:
        ``TransientDeliveryError`` (try again later, after ``retry_after`` when the provider
        said), ``PermanentDeliveryError`` (never again), ``DeadAddressError`` (and the address
        is suppressed), ``ProviderConfigError`` (herald's own configuration is wrong: the
        channel is held, an operator alerted). ``ambiguous`` marks an error after which the
        provider may have the message anyway (a timeout once the request was sent)."""
        ...

    async def close(self) -> None:
        """Release connections and sessions. Called once at shutdown, after the last send."""
        ...


@runtime_checkable
class BatchProvider(Protocol):
    """A provider that sends one content to many recipients in one call (SendGrid's
    personalizations): a broadcast whose deliveries rendered to the same content goes out at the
    provider's speed, each delivery still with its own outcome, receipt and callbacks.

    ``batch_key`` says what must be equal for two messages to share a call (None: this one
    cannot be batched). ``send_batch`` returns one outcome per message, in order: a receipt, or
    the :class:`herald.domain.errors.DeliveryError` that message's delivery gets (the provider
    isolates a refusal that concerns one recipient, e.g. by sending the batch one by one).
    """

    name: str
    batch_limit: int

    def batch_key(self, message: OutboundMessage) -> Hashable | None:
        """What must be equal for two messages to share one call (the content once each
        recipient's own parts are taken out); None when ``message`` cannot be batched. Pure:
        no I/O."""
        ...

    async def send_batch(self, messages: Sequence[OutboundMessage]) -> list[SendReceipt | Exception]:
        """Send up to ``batch_limit`` messages of one :meth:`batch_key` in one call. Returns one
        outcome per message, in the order given: its receipt, or the exception (a
        :class:`herald.domain.errors.DeliveryError`) its delivery gets, classified as for
        :meth:`Provider.send`. A refusal that may concern one recipient is isolated (the batch
        is sent again one by one); one that concerns the call (outage, rate limit, credentials)
        is every message's outcome."""
        ...


@runtime_checkable
class CallbackReceiver(Protocol):
    """A provider that takes status callbacks (``POST /v1/webhooks/{provider}``).

    ``parse_callback`` verifies the request with the provider's own scheme (the signature is the
    authentication) and returns what it says in herald's terms. It raises
    :class:`herald.domain.errors.PermissionDenied` for a forged, unsigned or stale request,
    :class:`herald.domain.errors.MalformedRequest` for a body it cannot read, and
    :class:`herald.domain.errors.ProviderConfigError` when herald lacks what is needed to verify.
    ``public_base`` is herald's public URL, for providers that sign the URL they called.
    """

    name: str

    def parse_callback(self, request: CallbackRequest, *, public_base: str) -> list[CallbackEvent]:
        """Verify ``request`` (the provider's signature scheme over its body, headers and, for
        some, the URL ``public_base`` + path they called) and return its status events in
        herald's terms, in the order the request lists them (empty: nothing herald tracks).
        Pure: no I/O, nothing applied (:class:`herald.services.track.TrackService` applies
        them). Raises ``PermissionDenied``, ``MalformedRequest`` or ``ProviderConfigError`` as
        the class says."""
        ...
