"""The Provider contract, once for every provider that has an emulator speaking its protocol.

Whatever the provider, an outcome is classified the same way, because the delivery service
decides retry, failure, deactivation and alerts from the error's class alone:

* ``ok``: a receipt with the provider's success code;
* ``timeout_after_send``: the request went out and no answer came in time: transient and
  **ambiguous** (the provider may have taken it: a resend can duplicate, and herald counts it);
* ``refused``: nobody listens: transient and **not** ambiguous (nothing left the machine);
* ``rate_limited``: 429 with ``Retry-After``: transient, carrying the delay;
* ``server_error``: the provider failing on its side (HTTP 5xx, SMTP 4xx): transient, no delay;
* ``dead_address``: an unregistered token, an unsubscribed number, a dead mailbox, a gone
  endpoint: :class:`DeadAddressError` (the address is deactivated);
* ``config_error``: herald's credentials or setup refused: :class:`ProviderConfigError` (hold the
  channel, alert ops; never blame the user's address).

After a transient outcome, the same provider instance sends the next message once the emulator
behaves again: a failure is that send's alone and leaves no broken connection in the pool.

Each outcome is produced by the provider's emulator (tests/contract/provider_cases.py), with
the emulator's real checks wherever it has them (a wrong API key, a token signed with the
wrong key). An outcome a provider cannot produce is listed in :data:`NOT_APPLICABLE` with the
reason, and shows as a skip. Provider-specific behaviour (request shapes, signatures,
callbacks, each provider's table of documented errors) stays in ``tests/integration/providers/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from herald.domain.errors import (
    DeadAddressError,
    DeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from tests.contract.provider_cases import CASES, RETRY_AFTER, SHORT_TIMEOUT, Case

OUTCOMES = (
    "ok",
    "timeout_after_send",
    "refused",
    "rate_limited",
    "server_error",
    "dead_address",
    "config_error",
)
ERROR: dict[str, type[DeliveryError]] = {
    "timeout_after_send": TransientDeliveryError,
    "refused": TransientDeliveryError,
    "rate_limited": TransientDeliveryError,
    "server_error": TransientDeliveryError,
    "dead_address": DeadAddressError,
    "config_error": ProviderConfigError,
}
# Outcomes that pass: once the emulator behaves again, the same provider sends the next message.
PASSING = ("timeout_after_send", "rate_limited", "server_error")

# The code each provider reports for each outcome (its receipt code for "ok").
CODES: dict[str, dict[str, str]] = {
    "sendgrid": {
        "ok": "202", "timeout_after_send": "timeout", "refused": "connect",
        "rate_limited": "429", "server_error": "500", "config_error": "401",
    },
    "ses": {
        "ok": "200", "timeout_after_send": "timeout", "refused": "connect",
        "rate_limited": "TooManyRequestsException", "server_error": "InternalFailure",
        "config_error": "InvalidSignatureException",
    },
    "smtp": {
        "ok": "250", "timeout_after_send": "timeout", "refused": "connect",
        "server_error": "451 4.3.0", "dead_address": "550 5.1.1", "config_error": "553 5.7.1",
    },
    "twilio": {
        "ok": "201", "timeout_after_send": "timeout", "refused": "connect",
        "rate_limited": "20429", "server_error": "20500", "dead_address": "21610", "config_error": "20003",
    },
    "fcm": {
        "ok": "200", "timeout_after_send": "timeout", "refused": "connect",
        "rate_limited": "QUOTA_EXCEEDED", "server_error": "INTERNAL", "dead_address": "UNREGISTERED",
        "config_error": "invalid_grant",
    },
    "apns": {
        "ok": "200", "timeout_after_send": "timeout", "refused": "connect",
        "rate_limited": "TooManyRequests", "server_error": "InternalServerError",
        "dead_address": "Unregistered", "config_error": "InvalidProviderToken",
    },
    "webhook": {
        "ok": "200", "timeout_after_send": "timeout", "refused": "connect",
        "rate_limited": "429", "server_error": "500", "dead_address": "410",
    },
    "chat": {
        "ok": "sent", "timeout_after_send": "timeout", "refused": "connection",
        "rate_limited": "429", "server_error": "503", "dead_address": "410",
        "config_error": "scheme_unavailable",
    },
    "webpush": {
        "ok": "201", "timeout_after_send": "timeout", "refused": "connect",
        "rate_limited": "429", "server_error": "500", "dead_address": "410", "config_error": "403",
    },
}

# What a provider cannot say at send time, by its protocol, and why.
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("sendgrid", "dead_address"): "SendGrid says nothing of the mailbox when it accepts a message: "
    "bounces come later through the signed Event Webhook",
    ("ses", "dead_address"): "SES says nothing of the mailbox when it accepts a message: bounces "
    "come later through the configuration set's event destinations",
    ("smtp", "rate_limited"): "SMTP has no Retry-After: a server slowing herald down answers a 4xx, "
    "which is server_error (retried on herald's schedule)",
    ("webhook", "config_error"): "a webhook holds no herald credential a receiver could refuse: the "
    "URL is the user's, and a 401/403 is that receiver's answer about the delivery (permanent)",
}
# Providers that see a 429 but not its Retry-After: the retry follows herald's schedule.
NO_RETRY_AFTER: dict[str, str] = {
    "chat": "Apprise reports only the status of a failed post, never its headers",
}

PARAMS = [
    pytest.param(
        name,
        outcome,
        id=f"{name}-{outcome}",
        marks=[pytest.mark.skip(reason=f"not applicable: {NOT_APPLICABLE[name, outcome]}")]
        if (name, outcome) in NOT_APPLICABLE
        else [],
    )
    for name in CASES
    for outcome in OUTCOMES
]


def test_every_outcome_is_either_coded_or_declared_not_applicable() -> None:
    for name in CASES:
        for outcome in OUTCOMES:
            assert (outcome in CODES[name]) != ((name, outcome) in NOT_APPLICABLE), (name, outcome)


@pytest.fixture
async def case(request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    made = CASES[request.param]()
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


@pytest.mark.parametrize(("case", "outcome"), PARAMS, indirect=["case"])
async def test_outcome_is_classified_alike_by_every_provider(case: Case, outcome: str) -> None:
    if outcome == "refused":
        provider, message = case.refused()
    elif outcome == "config_error":
        provider, message = case.misconfigured()
    else:
        provider = case.build(timeout=SHORT_TIMEOUT) if outcome == "timeout_after_send" else case.build()
        message = case.message()
    code = CODES[case.name][outcome]
    try:
        if outcome == "ok":
            assert (await provider.send(message)).code == code
            return
        if case.warm_up and outcome not in ("refused", "config_error"):
            await provider.send(message)
        if outcome not in ("refused", "config_error"):
            case.inject(outcome)
        with pytest.raises(DeliveryError) as info:
            await provider.send(message)
        if outcome in PASSING:
            case.heal()
            receipt = await provider.send(message)  # the same provider, its pool after the failure
            assert receipt.code == CODES[case.name]["ok"], "the failure was that send's alone"
    finally:
        await provider.close()
    error = info.value
    assert type(error) is ERROR[outcome], repr(error)
    assert error.code == code, repr(error)
    if outcome == "timeout_after_send":
        assert error.ambiguous is True, "the provider may have taken it: a resend can duplicate"
    else:
        assert error.ambiguous is False, "the provider said no, or nothing left the machine"
    if outcome == "rate_limited" and case.name not in NO_RETRY_AFTER:
        assert error.retry_after == pytest.approx(RETRY_AFTER, abs=1), error.retry_after
    else:
        assert error.retry_after is None, "no delay was heard: herald's own schedule decides"
