"""The list's search box: a fragment of a reference or an email, or a phone number as typed.

Merchants paste what they have: "ord-10", "Jane.Doe@", "020 7946 0958". So a
reference or an email matches by a case-insensitive prefix, and a phone number
matches exactly once read into E.164 (the form it is stored in), in the
organization's country when it has no international prefix.

A prefix is a range over lower(column): `>= prefix AND < prefix with its last
character one higher`, compared byte by byte so that punctuation counts
(under en_US "ord-1" and "ord1" sort together). Both databases serve it from an
index on (organization_id, lower(column)): PostgreSQL through the pattern
operators (~>=~, ~<~) of a `text_pattern_ops` index, whatever the database's
collation; SQLite compares bytes anyway. References are ASCII and emails are
stored lower-cased, so Python's lower() and SQL's agree on every value stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import phonenumbers
from babel.core import get_global
from sqlalchemy import ColumnElement, and_, false, func, or_

from recovery import declines
from recovery.models import Transaction
from recovery.transactions.validation import has_control_characters

# The highest code point has no successor: a prefix ending in it gets no upper bound.
_MAX_CHAR = 0x10FFFF


def prefix_range(text: str) -> tuple[str, str | None]:
    """The lower-cased prefix and the first string above every string that starts with it."""
    low = text.lower()
    last = ord(low[-1])
    if last >= _MAX_CHAR:
        return low, None
    high = low[:-1] + chr(last + 1)
    # Skip the surrogate block: no stored text holds one, and no driver can send one.
    if 0xD800 <= last + 1 <= 0xDFFF:
        high = low[:-1] + chr(0xE000)
    return low, high


def _starts_with(column: Any, text: str, dialect: str) -> ColumnElement[bool]:
    key = func.lower(column)
    low, high = prefix_range(text)
    conditions: list[ColumnElement[bool]]
    if dialect == "postgresql":
        # The operators of text_pattern_ops: byte order, whatever the collation.
        conditions = [key.op("~>=~", is_comparison=True)(low)]
        if high is not None:
            conditions.append(key.op("~<~", is_comparison=True)(high))
    else:
        conditions = [key >= low]
        if high is not None:
            conditions.append(key < high)
    return and_(*conditions)


@cache
def _zone_countries() -> Mapping[str, str]:
    zones: Mapping[str, str] = get_global("zone_territories")
    return zones


def country_for_timezone(timezone: str | None) -> str | None:
    """The country of an IANA time zone ("Europe/London" → "GB"), for reading local phone numbers."""
    if not timezone:
        return None
    country = _zone_countries().get(timezone)
    return country if country and len(country) == 2 and country != "ZZ" else None


def phone_e164(text: str, country: str | None) -> str | None:
    """The number as stored (E.164) if `text` reads as a valid phone number, else None.

    "+44 20 7946 0958", "0044 20 7946 0958" and, in Great Britain, "020 7946 0958"
    are the same number. Letters in it mean it is not one (a reference, say).
    """
    if not any(c.isdigit() for c in text) or any(c.isalpha() for c in text) or "@" in text:
        return None
    candidate = text.strip()
    if candidate.startswith("00"):
        candidate = "+" + candidate[2:]
    try:
        number = phonenumbers.parse(candidate, None if candidate.startswith("+") else country)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def search_condition(q: str, *, country: str | None, dialect: str) -> ColumnElement[bool]:
    """Rows whose reference or email starts with `q` (any case), or whose phone is `q` read as one."""
    text = q.strip()
    if not text or has_control_characters(text):
        return false()  # nothing stored holds such characters (validation refuses them)
    conditions = [
        _starts_with(Transaction.transaction_ref, text, dialect),
        _starts_with(Transaction.customer_email, text, dialect),
    ]
    phone = phone_e164(text, country)
    if phone:
        conditions.append(Transaction.customer_phone == phone)
    return or_(*conditions)


def category_condition(name: str) -> ColumnElement[bool]:
    """Rows whose failure code falls in the decline category `name` (one of declines.CATEGORIES).

    A plain IN over the known codes, so the (organization_id, ...) indexes still
    lead; `unknown` is the rest: no code, or one no known list holds (Stripe adds
    codes before we do).
    """
    if name != declines.UNKNOWN:
        return Transaction.failure_code.in_(declines.codes_in(name))
    known = [
        code
        for other in declines.CATEGORIES
        if other != declines.UNKNOWN
        for code in declines.codes_in(other)
    ]
    return or_(Transaction.failure_code.is_(None), Transaction.failure_code.not_in(known))
