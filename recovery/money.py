"""Currencies and amounts: minor units in, the currency's own format out.

Exponents follow Stripe's lists (zero-decimal and three-decimal currencies);
every other currency has two decimals. Formatting uses Babel's CLDR data.
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import cache

from babel.numbers import format_currency, list_currencies

ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())

# Stripe's largest amount is 99,999,999 in most currencies' minor units; we keep
# a roomier bound that still catches a misplaced decimal separator.
MAX_AMOUNT = 999_999_999_99


_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


class AmountError(ValueError):
    """An amount or currency that cannot be accepted; the message says why."""


@cache
def known_currencies() -> frozenset[str]:
    return frozenset(code.lower() for code in list_currencies())


def exponent(currency: str) -> int:
    currency = currency.lower()
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def normalize_currency(raw: str | None) -> str:
    """Return a known ISO 4217 code in lower case, or raise AmountError."""
    code = (raw or "").strip().lower()
    if not code:
        raise AmountError("Currency is required (an ISO 4217 code such as usd).")
    if len(code) != 3 or not code.isalpha() or code not in known_currencies():
        raise AmountError(f"{raw!r} is not a known ISO 4217 currency code.")
    return code


def parse_amount(raw: str | int | None, currency: str, *, major: bool = False) -> int:
    """Return a positive amount in minor units.

    An integer ("5000") is taken as minor units; a decimal string ("50.00") as
    major units, converted exactly with Decimal (never float) and refused if it
    has more decimals than the currency allows. With `major`, every string is in
    major units (a staff form: "50" means $50.00).
    """
    if isinstance(raw, bool):
        raise AmountError("Amount must be a number.")
    if isinstance(raw, int):
        minor = raw
    else:
        text = (raw or "").strip().replace("_", "")
        if not text:
            raise AmountError("Amount is required.")
        if not _NUMBER.match(text):
            raise AmountError(f"{raw!r} is not a number; write 5000 (minor units) or 50.00.")
        value = Decimal(text)
        if "." in text or major:
            places = exponent(currency)
            minor_value = value.scaleb(places)
            if minor_value != minor_value.to_integral_value():
                unit = "no decimals" if places == 0 else f"at most {places} decimals"
                raise AmountError(f"{currency.upper()} amounts take {unit}; got {raw!r}.")
            minor = int(minor_value)
        elif value == value.to_integral_value():
            minor = int(value)
        else:
            raise AmountError(f"{raw!r} is not a whole number of minor units.")
    if minor <= 0:
        raise AmountError("Amount must be greater than zero.")
    if minor > MAX_AMOUNT:
        raise AmountError("Amount is too large.")
    return minor


def to_major(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-exponent(currency))


def format_amount(amount: int, currency: str, locale: str = "en_US") -> str:
    """Format minor units for people: 5000 usd → $50.00, 5000 jpy → ¥5,000."""
    try:
        return format_currency(to_major(amount, currency), currency.upper(), locale=locale)
    except (ValueError, LookupError):
        return f"{to_major(amount, currency):,.{exponent(currency)}f} {currency.upper()}"


def format_major(amount: int, currency: str) -> str:
    """Plain decimal string in major units, for forms and CSV: 5000 usd → 50.00."""
    places = exponent(currency)
    return f"{to_major(amount, currency):.{places}f}"
