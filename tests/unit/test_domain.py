from __future__ import annotations

import random

import pytest

from herald.domain.errors import IllegalTransition, ValidationError
from herald.domain.models import DeliveryStatus as S
from herald.domain.models import Template, new_id
from herald.domain.policies import RetrySchedule, parse_rate_limit_reset, parse_retry_after
from herald.domain.states import FINAL, TRANSITIONS, check_transition, sources_of
from herald.domain.validation import check_timezone, mask, normalize_email, normalize_phone


def test_every_status_has_a_transition_row_and_final_ones_do_not_go_back_to_sending() -> None:
    assert set(TRANSITIONS) == set(S)
    for status in FINAL:
        assert S.SENDING not in TRANSITIONS[status]


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.SENT, S.SENDING),
        (S.SKIPPED, S.QUEUED),
        (S.CANCELLED, S.SENT),
        (S.READ, S.DELIVERED),
        (S.QUEUED, S.SENT),
    ],
)
def test_illegal_transitions_raise(current: S, new: S) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(current, new)


def test_legal_transitions_pass_and_sources_are_the_inverse() -> None:
    check_transition(S.QUEUED, S.SENDING)
    check_transition(S.SENDING, S.RETRYING)
    check_transition(S.DEAD, S.QUEUED)
    assert sources_of(S.SENDING) == {S.QUEUED, S.RETRYING}


def test_retry_schedule_with_jitter_and_retry_after() -> None:
    sched = RetrySchedule(delays=(0, 60, 300, 1800), jitter=0.1)
    rng = random.Random(1)
    assert sched.next_delay(0, rng=rng) == 0
    for n, base in ((1, 60), (2, 300), (3, 1800)):
        d = sched.next_delay(n, rng=rng)
        assert d is not None and base <= d <= base * 1.1
    assert sched.next_delay(4) is None
    # Retry-After pushes later, never earlier.
    assert sched.next_delay(1, retry_after=120, rng=rng) == 120
    d = sched.next_delay(2, retry_after=5, rng=rng)
    assert d is not None and d >= 300


def test_retry_after_parsing() -> None:
    assert parse_retry_after("120", now=0) == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412400) == 80
    assert parse_retry_after("soon", now=0) is None
    assert parse_rate_limit_reset("1800000100", now=1800000000) == 100


def test_template_locale_falls_back_field_by_field() -> None:
    t = Template(
        name="w",
        version=1,
        category=None,
        channels={"email": {"subject": "Welcome", "text": "Hi"}},
        locales={"fr": {"email": {"subject": "Bienvenue"}}},
    )
    assert t.variant("email", "fr-CA") == {"subject": "Bienvenue", "text": "Hi"}
    assert t.variant("email", "es") == {"subject": "Welcome", "text": "Hi"}
    assert t.variant("sms", "fr") is None


def test_validation_and_masking() -> None:
    assert normalize_phone("+33 6 12 34 56 78") == "+33612345678"
    for bad in ("0612345678", "+1555", "+abc"):
        with pytest.raises(ValidationError):
            normalize_phone(bad)
    assert normalize_email("Ana@Example.com").endswith("@example.com")
    with pytest.raises(ValidationError):
        normalize_email("ana@")
    with pytest.raises(ValidationError):
        check_timezone("Mars/Olympus")
    assert mask("ana@example.com") == "a***@example.com"
    assert mask("+33612345678") == "+33***78"
    assert mask("https://user:pw@hooks.example.com/T0/secret?token=x@y") == "https://hooks.example.com/***"


def test_ids_sort_by_time() -> None:
    ids = [new_id("ntf") for _ in range(100)]
    assert len(set(ids)) == 100
    assert ids[0] < ids[-1] or ids[0][:14] == ids[-1][:14]
