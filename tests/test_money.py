"""Amounts: minor units in, each currency's own format out, never through float."""

from __future__ import annotations

import pytest

from recovery.money import (
    STRIPE_CURRENCIES,
    AmountError,
    card_charge_problem,
    exponent,
    format_amount,
    format_major,
    normalize_currency,
    parse_amount,
)


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (5000, "usd", "$50.00"),
        (5, "usd", "$0.05"),
        (123456789, "usd", "$1,234,567.89"),
        (5000, "jpy", "¥5,000"),
        (1, "jpy", "¥1"),
        (5000, "krw", "₩5,000"),
        (5000, "bhd", "BHD5.000"),
        (1, "bhd", "BHD0.001"),
        (1234567, "kwd", "KWD1,234.567"),
        (5000, "eur", "€50.00"),
        (5000, "gbp", "£50.00"),
        (199, "gbp", "£1.99"),
        # CLDR shows no decimals for HUF; Stripe counts it in hundredths, so
        # the fraction must not be rounded away.
        (12345, "huf", "HUF123.45"),
    ],
)
def test_format_amount_in_the_currencys_own_format(amount: int, currency: str, expected: str) -> None:
    assert format_amount(amount, currency) == expected


def test_format_amount_follows_the_locale() -> None:
    assert format_amount(123456, "eur", "de_DE") == "1.234,56\xa0€"
    assert format_amount(5000, "jpy", "de_DE") == "5.000\xa0¥"


def test_format_amount_with_an_unknown_locale_still_shows_the_amount() -> None:
    assert format_amount(5000, "usd", "xx_YY") == "50.00 USD"


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [(5000, "usd", "50.00"), (5000, "jpy", "5000"), (5000, "bhd", "5.000"), (7, "eur", "0.07")],
)
def test_format_major_for_forms(amount: int, currency: str, expected: str) -> None:
    assert format_major(amount, currency) == expected


@pytest.mark.parametrize(
    ("amount", "currency", "problem"),
    [
        (5124, "kwd", "Stripe charges KWD only in steps of 0.010, so KWD5.124 cannot be collected as it is."),
        (1, "BHD", "Stripe charges BHD only in steps of 0.010, so BHD0.001 cannot be collected as it is."),
        (5120, "kwd", None),
        (10, "tnd", None),
        (5124, "usd", None),
        (5125, "jpy", None),
    ],
)
def test_card_charge_problem_follows_stripes_three_decimal_rule(
    amount: int, currency: str, problem: str | None
) -> None:
    assert card_charge_problem(amount, currency) == problem


@pytest.mark.parametrize(
    ("currency", "places"),
    [("usd", 2), ("eur", 2), ("jpy", 0), ("krw", 0), ("vnd", 0), ("bhd", 3), ("kwd", 3), ("JPY", 0)],
)
def test_exponent_follows_stripes_lists(currency: str, places: int) -> None:
    assert exponent(currency) == places


@pytest.mark.parametrize(
    ("raw", "currency", "expected"),
    [
        # Whole numbers are minor units, as Stripe counts them.
        ("5000", "usd", 5000),
        (5000, "usd", 5000),
        ("5000", "jpy", 5000),
        (" 5000 ", "usd", 5000),
        ("1_000", "usd", 1000),
        ("007", "usd", 7),
        # Decimals are major units, converted exactly.
        ("0.29", "usd", 29),
        ("19.99", "usd", 1999),
        ("1.1", "usd", 110),
        ("50.00", "usd", 5000),
        ("0.01", "usd", 1),
        ("1.005", "bhd", 1005),
        ("1.000", "bhd", 1000),
        ("1.5", "kwd", 1500),
        ("5000.0", "jpy", 5000),
        ("1.10", "usd", 110),
        ("999999999.99", "usd", 99999999999),
    ],
)
def test_parse_amount_good(raw: str | int, currency: str, expected: int) -> None:
    assert parse_amount(raw, currency) == expected


@pytest.mark.parametrize(
    ("raw", "currency", "expected"),
    [
        ("50", "usd", 5000),
        ("50", "jpy", 50),
        ("50", "bhd", 50000),
        ("0.29", "usd", 29),
        ("19.99", "eur", 1999),
    ],
)
def test_parse_amount_in_major_units_for_the_staff_form(raw: str, currency: str, expected: int) -> None:
    assert parse_amount(raw, currency, major=True) == expected


@pytest.mark.parametrize(
    ("raw", "currency", "message"),
    [
        ("1.5", "jpy", "JPY amounts take no decimals"),
        ("1.50", "jpy", "JPY amounts take no decimals"),
        ("1.001", "usd", "USD amounts take at most 2 decimals"),
        ("1.0001", "bhd", "BHD amounts take at most 3 decimals"),
        # Past Decimal's default 28-digit precision, a rounding conversion would accept these.
        ("0.10000000000000000000000000001", "usd", "at most 2 decimals"),
        ("1." + "0" * 40 + "1", "usd", "at most 2 decimals"),
        ("0", "usd", "greater than zero"),
        (0, "usd", "greater than zero"),
        ("0.00", "usd", "greater than zero"),
        ("-5", "usd", "greater than zero"),
        ("-0.50", "usd", "greater than zero"),
        (-5, "usd", "greater than zero"),
        ("abc", "usd", "is not a number"),
        ("1e3", "usd", "is not a number"),
        ("1E3", "usd", "is not a number"),
        ("1,000", "usd", "is not a number"),
        ("50.", "usd", "is not a number"),
        (".50", "usd", "is not a number"),
        ("$50", "usd", "is not a number"),
        ("NaN", "usd", "is not a number"),
        ("Infinity", "usd", "is not a number"),
        ("0x10", "usd", "is not a number"),
        ("１２", "usd", "is not a number"),  # fullwidth digits
        ("١٢", "usd", "is not a number"),  # Arabic-Indic digits
        ("", "usd", "required"),
        ("   ", "usd", "required"),
        (None, "usd", "required"),
        (True, "usd", "must be a number"),
        (50.5, "usd", "decimal string"),  # a float may already have lost the cents
        ("100000000000", "usd", "too large"),
        ("1000000000.00", "usd", "too large"),
        (10**12, "usd", "too large"),
        ("9" * 5000, "usd", "too large"),
    ],
)
def test_parse_amount_refused(raw: object, currency: str, message: str) -> None:
    with pytest.raises(AmountError, match=message.replace("$", r"\$")):
        parse_amount(raw, currency)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"), [("usd", "usd"), ("USD", "usd"), (" eur ", "eur"), ("Jpy", "jpy")]
)
def test_normalize_currency_good(raw: str, expected: str) -> None:
    assert normalize_currency(raw) == expected


def test_every_currency_stripe_charges_is_accepted() -> None:
    from stripe_sandbox.objects import CURRENCIES as SANDBOX_CURRENCIES

    assert STRIPE_CURRENCIES == SANDBOX_CURRENCIES
    for code in STRIPE_CURRENCIES:
        assert normalize_currency(code.upper()) == code


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "required"),
        (None, "required"),
        ("xyz", "not a known ISO 4217"),
        ("us", "not a known ISO 4217"),
        ("usdd", "not a known ISO 4217"),
        ("12345", "not a known ISO 4217"),
        ("123", "not a known ISO 4217"),
        ("u$d", "not a known ISO 4217"),
        # ISO codes no card can be charged in: withdrawn, testing, precious metals.
        ("dem", "DEM is not a currency Stripe can charge cards in."),
        ("vef", "not a currency Stripe can charge"),
        ("XXX", "not a currency Stripe can charge"),
        ("xts", "not a currency Stripe can charge"),
        ("xau", "not a currency Stripe can charge"),
    ],
)
def test_normalize_currency_refused(raw: str | None, message: str) -> None:
    with pytest.raises(AmountError, match=message):
        normalize_currency(raw)
