"""One set of field rules for the form, the CSV import and the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from recovery.transactions.validation import (
    METADATA_MAX_BYTES,
    clean_country,
    clean_datetime,
    clean_email,
    clean_failure_code,
    clean_locale,
    clean_metadata,
    clean_phone,
    clean_ref,
    clean_text,
    clean_transaction,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("TXN-001", "TXN-001"),
        ("  TXN-001  ", "TXN-001"),
        ("a", "a"),
        ("ch_3MmlLrLkdIwHu7ix0snN0B15", "ch_3MmlLrLkdIwHu7ix0snN0B15"),
        ("order.2025:17#3", "order.2025:17#3"),
        ("x" * 64, "x" * 64),
    ],
)
def test_ref_good(raw: str, expected: str) -> None:
    assert clean_ref(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "required"),
        ("   ", "required"),
        (None, "required"),
        ("x" * 65, "At most 64 characters"),
        ("TXN 001", "letters, digits"),
        ("-TXN", "starting with a letter or digit"),
        ("TXN/1", "letters, digits"),
        ("TXN'1", "letters, digits"),
        ("Ünïcode", "letters, digits"),
        ("TXN\x00", "control characters"),
        ("TXN\n2", "control characters"),
    ],
)
def test_ref_refused(raw: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clean_ref(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("customer@example.com", "customer@example.com"),
        ("Customer@Example.COM", "customer@example.com"),
        ("  a.b+tag@sub.example.co.uk ", "a.b+tag@sub.example.co.uk"),
        ("", None),
        (None, None),
    ],
)
def test_email_good(raw: str | None, expected: str | None) -> None:
    assert clean_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("customer", "must have an @-sign"),
        ("customer@", "There must be something after the @-sign"),
        ("@example.com", "There must be something before the @-sign"),
        ("a@localhost", "should have a period"),
        ("a@@example.com", "invalid characters"),
        ("a b@example.com", "invalid character"),
        ("a@example..com", "period"),
        ("x" * 250 + "@example.com", "At most 254 characters"),
        ("a\x07@example.com", "control characters"),
    ],
)
def test_email_refused(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clean_email(raw)


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("+1 415 555 0123", None, "+14155550123"),
        ("+14155550123", None, "+14155550123"),
        ("+1 (415) 555-0123", None, "+14155550123"),
        ("+44 20 7946 0958", None, "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("(415) 555-0123", "US", "+14155550123"),
        ("030 123456", "DE", "+4930123456"),
        # An international number wins over the country.
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("", None, None),
        (None, "US", None),
    ],
)
def test_phone_normalised_to_e164(raw: str | None, country: str | None, expected: str | None) -> None:
    assert clean_phone(raw, country) == expected


@pytest.mark.parametrize(
    ("raw", "country", "message"),
    [
        ("020 7946 0958", None, "international form"),
        ("abc", None, "is not a phone number"),
        ("123", None, "is not a phone number"),
        ("+1 555", None, "not a valid phone number"),
        ("+1 415 555 01234567", None, "not a valid phone number"),
        ("12", "US", "not a valid phone number"),
        ("+" + "1" * 40, None, "too long"),
    ],
)
def test_phone_refused(raw: str, country: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clean_phone(raw, country)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("US", "US"),
        ("us", "US"),
        (" de ", "DE"),
        ("GB", "GB"),
        ("JP", "JP"),
        ("XK", "XK"),
        ("", None),
        (None, None),
    ],
)
def test_country_good(raw: str | None, expected: str | None) -> None:
    assert clean_country(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "USA",
        "U",
        "XX",
        "QO",
        "12",
        "840",
        "UK",  # the ISO code is GB
        "ZZ",  # "unknown region"
        "EU",  # not a country
        "SU",  # retired codes
        "YU",
        "DD",
    ],
)
def test_country_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="ISO 3166"):
        clean_country(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("en", "en"),
        ("EN", "en"),
        ("en-US", "en-US"),
        ("en_US", "en-US"),
        ("en-us", "en-US"),
        ("de-DE", "de-DE"),
        ("pt-BR", "pt-BR"),
        ("ja", "ja"),
        ("", None),
        (None, None),
    ],
)
def test_locale_good(raw: str | None, expected: str | None) -> None:
    assert clean_locale(raw) == expected


@pytest.mark.parametrize("raw", ["xx", "english", "123", "en-US-x-private", "e", "en--US"])
def test_locale_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="not a known locale"):
        clean_locale(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("card_declined", "card_declined"),
        ("Insufficient_Funds", "insufficient_funds"),
        ("  expired_card ", "expired_card"),
        ("do_not_honor_05", "do_not_honor_05"),
        ("", None),
        (None, None),
    ],
)
def test_failure_code_good(raw: str | None, expected: str | None) -> None:
    assert clean_failure_code(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("card-declined", "lower-case letters, digits and underscores"),
        ("card declined", "lower-case letters, digits and underscores"),
        ("carte_refusée", "lower-case letters, digits and underscores"),
        ("x" * 65, "At most 64 characters"),
        ("card\tdeclined", "control characters"),
    ],
)
def test_failure_code_refused(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clean_failure_code(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-01-19", datetime(2025, 1, 19, tzinfo=UTC)),
        ("2025-01-19T10:00:00Z", datetime(2025, 1, 19, 10, tzinfo=UTC)),
        ("2025-01-19T10:00:00+02:00", datetime(2025, 1, 19, 8, tzinfo=UTC)),
        ("2025-01-19 10:00:00", datetime(2025, 1, 19, 10, tzinfo=UTC)),  # naive means UTC
        ("2025-01-19T10:00:00.123456Z", datetime(2025, 1, 19, 10, 0, 0, 123456, tzinfo=UTC)),
        ("", None),
        (None, None),
    ],
)
def test_failed_at_good(raw: str | None, expected: datetime | None) -> None:
    assert clean_datetime(raw) == expected


def test_failed_at_returns_aware_utc() -> None:
    value = clean_datetime("2025-06-01T12:00:00-05:00")
    assert value is not None
    assert value.utcoffset() == timedelta(0)
    assert value.hour == 17


def _in(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_in(1), "cannot be in the future"),
        ((datetime.now(UTC) + timedelta(days=2)).date().isoformat(), "cannot be in the future"),
        ("2999-01-01", "cannot be in the future"),
        ("1999-12-31", "implausibly old"),
        ("yesterday", "is not a date"),
        ("2025-13-01", "is not a date"),
        ("2025-02-30", "is not a date"),
        ("19/01/2025", "is not a date"),
        ("1737280800", "is not a date"),
    ],
)
def test_failed_at_refused(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clean_datetime(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"order_id": "ORD-123"}', {"order_id": "ORD-123"}),
        ('{"n": 3, "ok": true, "f": 1.5}', {"n": 3, "ok": True, "f": 1.5}),  # null: tests/test_bad_input.py
        ({"order_id": "ORD-123"}, {"order_id": "ORD-123"}),
        ("{}", {}),
        ("", {}),
        (None, {}),
    ],
)
def test_metadata_good(raw: Any, expected: dict[str, Any]) -> None:
    assert clean_metadata(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "must be a JSON object"),
        ('{"a": 1', "must be a JSON object"),
        ("[1, 2]", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
        ("null", "must be a JSON object"),
        ("42", "must be a JSON object"),
        ('{"a": {"b": 1}}', "strings, numbers or booleans"),
        ('{"a": [1]}', "strings, numbers or booleans"),
        # PostgreSQL's json type refuses these; they must not reach the database.
        ('{"a": NaN}', "finite"),
        ('{"a": Infinity}', "finite"),
        ('{"a": -Infinity}', "finite"),
        ('{"a": 1e999}', "finite"),
        ('{"a": "' + "x" * METADATA_MAX_BYTES + '"}', f"larger than {METADATA_MAX_BYTES} bytes"),
        # Deep enough to exhaust json's recursion, short enough for a CSV cell or a form.
        ("[" * 3000, "nested too deeply"),
        ('{"a": ' * 3000, "nested too deeply"),
    ],
)
def test_metadata_refused(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clean_metadata(raw)


@pytest.mark.parametrize(
    ("name", "limit"),
    [("customer_name", 200), ("failure_message", 500), ("failure_code", 64), ("transaction_ref", 64)],
)
def test_text_length_limits(name: str, limit: int) -> None:
    assert clean_text("x" * limit, name) == "x" * limit
    with pytest.raises(ValueError, match=f"At most {limit} characters \\(got {limit + 1}\\)"):
        clean_text("x" * (limit + 1), name)


@pytest.mark.parametrize(
    "raw",
    [
        "Ann\x00Lee",
        "Ann\x1b[31mLee",
        "Ann\rLee",
        "Ann\nLee",
        "Ann\tLee",
        "Ann\x7fLee",
        "Ann\x85Lee",
        "Ann\x9bLee",
    ],
)
def test_control_characters_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        clean_text(raw, "customer_name")


def test_text_keeps_non_ascii_letters() -> None:
    assert clean_text("  Zoë Ångström-Łukasiewicz 山田 ", "customer_name") == "Zoë Ångström-Łukasiewicz 山田"


GOOD = {
    "transaction_ref": "TXN-001",
    "amount": "5000",
    "currency": "USD",
    "customer_name": "Ann Lee",
    "customer_email": "Ann@Example.com",
    "customer_phone": "020 7946 0958",
    "customer_country": "gb",
    "customer_locale": "en_GB",
    "failure_code": "card_declined",
    "failure_message": "Your card was declined.",
    "failed_at": "2025-01-19T10:00:00Z",
    "metadata": '{"order_id": "ORD-123"}',
}


def test_clean_transaction_good() -> None:
    cleaned = clean_transaction(GOOD)
    assert cleaned.ok, cleaned.errors
    assert cleaned.values == {
        "transaction_ref": "TXN-001",
        "amount": 5000,
        "currency": "usd",
        "customer_name": "Ann Lee",
        "customer_email": "ann@example.com",
        "customer_phone": "+442079460958",  # the country makes the local number valid
        "customer_country": "GB",
        "customer_locale": "en-GB",
        "failure_code": "card_declined",
        "failure_message": "Your card was declined.",
        "failed_at": datetime(2025, 1, 19, 10, tzinfo=UTC),
        "metadata": {"order_id": "ORD-123"},
    }


def test_clean_transaction_minimal_and_major_units() -> None:
    cleaned = clean_transaction(
        {"transaction_ref": "T1", "amount": "50", "currency": "usd"}, major_units=True
    )
    assert cleaned.ok, cleaned.errors
    assert cleaned.values["amount"] == 5000
    assert "failed_at" not in cleaned.values  # the model's default (now) applies
    assert cleaned.values["metadata"] == {}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("transaction_ref", ""),
        ("transaction_ref", "has space"),
        ("amount", "0"),
        ("amount", "12.345"),
        ("amount", "ten"),
        ("currency", "zzz"),
        ("currency", ""),
        ("customer_email", "not-an-email"),
        ("customer_phone", "12"),
        ("customer_country", "XX"),
        ("customer_locale", "xx"),
        ("failure_code", "Card Declined"),
        ("failure_message", "x" * 501),
        ("customer_name", "x" * 201),
        ("failed_at", "2999-01-01"),
        ("metadata", "[]"),
    ],
)
def test_clean_transaction_reports_each_bad_field_by_name(field: str, value: str) -> None:
    cleaned = clean_transaction({**GOOD, field: value})
    assert not cleaned.ok
    assert field in cleaned.errors
    # Only the field itself, and what depends on it: the amount on the currency,
    # a local phone number on the country.
    dependents = {"currency": {"amount"}, "customer_country": {"customer_phone"}}.get(field, set())
    assert set(cleaned.errors) - {field} <= dependents


def test_clean_transaction_amount_waits_for_a_valid_currency() -> None:
    cleaned = clean_transaction({**GOOD, "currency": "nope", "amount": "5000"})
    assert cleaned.errors["currency"]
    assert cleaned.errors["amount"] == "Set a valid currency first."


def test_clean_transaction_reports_every_bad_field_at_once() -> None:
    cleaned = clean_transaction(
        {"transaction_ref": "", "amount": "-1", "currency": "usd", "customer_email": "x"}
    )
    assert set(cleaned.errors) == {"transaction_ref", "amount", "customer_email"}


def test_clean_transaction_ignores_unknown_keys() -> None:
    cleaned = clean_transaction({**GOOD, "status": "recovered", "organization_id": 99})
    assert cleaned.ok
    assert "status" not in cleaned.values
    assert "organization_id" not in cleaned.values


def test_failure_message_keeps_lines_and_tabs_but_not_other_controls() -> None:
    assert (
        clean_text("Declined.\nCall your bank.\tRef 7", "failure_message")
        == "Declined.\nCall your bank.\tRef 7"
    )
    with pytest.raises(ValueError, match="control characters"):
        clean_text("Declined\x1b[31m", "failure_message")
