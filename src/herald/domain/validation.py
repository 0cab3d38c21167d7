"""Validation of addresses, locales and time zones, shared by every entrypoint."""

from __future__ import annotations

import functools
import re
import zoneinfo

import email_validator
import phonenumbers

from herald.domain.errors import ValidationError

_LOCALE = re.compile(r"^[a-zA-Z]{2,3}([-_][a-zA-Z0-9]{2,8})*$")
_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


def check_id(value: str, field: str) -> str:
    if not _ID.match(value):
        raise ValidationError(f"{field} must be 1-128 characters of letters, digits and _.:@-", field=field)
    return value


# An ASCII dot-atom local part: nothing in it that email_validator would change or refuse.
_PLAIN_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


@functools.lru_cache(maxsize=4096)
def _normalized_domain(domain: str) -> str:
    """email_validator's verdict on a domain (most of its cost), kept per domain: a bulk import
    of a million users has a few thousand distinct domains. Raises EmailNotValidError."""
    return str(email_validator.validate_email(f"a@{domain}", check_deliverability=False).domain)


def normalize_email(value: str, field: str = "email") -> str:
    try:
        local, at, domain = value.rpartition("@")
        if at and len(local) <= 64 and _PLAIN_LOCAL.match(local):
            # The same result as the full validation below, from the cached domain verdict.
            normalized = f"{local}@{_normalized_domain(domain)}"
            if len(normalized) <= 254:
                return normalized
        result = email_validator.validate_email(value, check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise ValidationError(f"{field} is not a valid email address: {exc}", field=field) from None
    return result.normalized


def normalize_phone(value: str, field: str = "phone") -> str:
    """Phones must be E.164: a plus, the country code and the number."""
    if not value.startswith("+"):
        raise ValidationError(f"{field} must be in E.164 form, for example +33612345678", field=field)
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValidationError(f"{field} is not a valid phone number", field=field) from None
    if not phonenumbers.is_possible_number(number) or not phonenumbers.is_valid_number(number):
        raise ValidationError(f"{field} is not a valid phone number", field=field)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_timezone(value: str, field: str = "timezone") -> str:
    # ZoneInfo reads a file named by the key: a folder of the database ("America", "Etc") is an
    # IsADirectoryError, an over-long name another OSError; all of them are "not a zone".
    if not value or len(value) > 64 or "\x00" in value:
        raise ValidationError(f"{field} is not a known IANA time zone: {value[:64]!r}", field=field)
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
        raise ValidationError(f"{field} is not a known IANA time zone: {value!r}", field=field) from None
    return value


def check_locale(value: str, field: str = "locale") -> str:
    if not _LOCALE.match(value):
        raise ValidationError(f"{field} is not a locale tag such as 'fr' or 'pt-BR'", field=field)
    return value


def mask(value: str | None) -> str | None:
    """For logs: keep enough to recognise an address, never the whole of it."""
    if value is None:
        return None
    if "://" in value:  # a URL (webhook, chat): scheme and host only, never paths, queries or secrets
        scheme, _, rest = value.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        return f"{scheme}://{host}/***"
    if "@" in value:
        local, _, domain = value.partition("@")
        return (local[:1] + "***@" + domain) if local else "***@" + domain
    if len(value) <= 4:
        return "***"
    return value[:3] + "***" + value[-2:]
