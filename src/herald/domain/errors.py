"""The one exception tree of herald.

HeraldError
├── ValidationError          bad input: the caller must change the request (422)
│   └── MalformedRequest     the body could not even be parsed (400)
├── NotFound                 an id or name that does not exist (404)
├── Conflict                 the request races or contradicts stored state (409)
│   ├── IdempotencyInProgress
│   └── IdempotencyKeyTaken  another request committed the key first (store → accept service)
├── IdempotencyMismatch      same key, different body (422)
├── AuthenticationError      missing or unknown credentials (401)
├── PermissionDenied         valid credentials, insufficient scope (403)
├── PayloadTooLarge          body over the configured limit (413)
├── IllegalTransition        a delivery state change the state machine forbids
├── TemplateError            a template that does not compile or render safely (422)
├── ConfigurationError       a bad configuration value, naming its key
├── ServiceUnavailable       a backend (database, cache, broker) is unreachable (503)
└── DeliveryError            raised by providers; the class decides what happens next
    ├── TransientDeliveryError   retry later (honouring retry_after)
    ├── PermanentDeliveryError   fail now, the message itself is bad
    │   └── DeadAddressError     fail now and mark the address or token unusable
    └── ProviderConfigError      herald's credentials or setup are wrong: hold, alert
"""

from __future__ import annotations


class HeraldError(Exception):
    """Root of every error herald raises on purpose."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class ValidationError(HeraldError):
    status = 422
    title = "Invalid request"


class MalformedRequest(ValidationError):
    status = 400
    title = "Malformed request"


class NotFound(HeraldError):
    status = 404
    title = "Not found"


class Conflict(HeraldError):
    status = 409
    title = "Conflict"


class IdempotencyInProgress(Conflict):
    title = "Request with this idempotency key is still being processed"


class IdempotencyKeyTaken(Conflict):
    """Raised by ``Store.create_notifications`` when another request committed the same
    idempotency key first; nothing of this commit is stored. Carries the winner's record."""

    def __init__(
        self,
        detail: str,
        *,
        request_hash: str,
        status_code: int | None = None,
        response: dict[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.request_hash = request_hash
        self.status_code = status_code
        self.response = response


class IdempotencyMismatch(HeraldError):
    status = 422
    title = "Idempotency key reused with a different request"


class AuthenticationError(HeraldError):
    status = 401
    title = "Unauthorized"


class PermissionDenied(HeraldError):
    status = 403
    title = "Forbidden"


class PayloadTooLarge(HeraldError):
    status = 413
    title = "Payload too large"


class IllegalTransition(HeraldError):
    status = 409
    title = "Illegal state transition"


class TemplateError(ValidationError):
    title = "Template error"


class ConfigurationError(HeraldError):
    title = "Configuration error"


class ServiceUnavailable(HeraldError):
    status = 503
    title = "Service unavailable"


class DeliveryError(HeraldError):
    """Raised by a provider when a send did not succeed.

    ``code`` is the provider's own code (SMTP reply code, HTTP status, error name);
    ``ambiguous`` is true when the provider may have accepted the message anyway
    (a timeout after the request was fully sent).
    """

    outcome = "transient"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        ambiguous: bool = False,
        provider: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.retry_after = retry_after
        self.ambiguous = ambiguous
        self.provider = provider  # set by composite providers to the one that failed


class TransientDeliveryError(DeliveryError):
    outcome = "transient"


class PermanentDeliveryError(DeliveryError):
    outcome = "permanent"


class DeadAddressError(PermanentDeliveryError):
    outcome = "dead_address"


class ProviderConfigError(DeliveryError):
    outcome = "config_error"
