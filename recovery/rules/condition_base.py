"""What every rule condition is (`Condition`), and the readers that check its input.

`recovery.rules.conditions` has the condition types; this module has what they
share: the refusal naming the field at fault, and the checks of list values,
amounts, currencies, countries, decline categories and codes, sources.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import ColumnElement

from recovery import declines, money
from recovery.models import Transaction, TransactionSource
from recovery.refusals import Refused
from recovery.transactions.validation import clean_country

# A list condition longer than this is a data set, not a rule.
MAX_VALUES = 300
_DECLINE_CODE = re.compile(r"[a-z0-9_]{1,64}")
SOURCES = (
    TransactionSource.STRIPE,
    TransactionSource.CSV,
    TransactionSource.API,
    TransactionSource.FORM,
    TransactionSource.DEMO,
)
SOURCE_LABELS = {
    TransactionSource.STRIPE: "Stripe",
    TransactionSource.CSV: "a CSV import",
    TransactionSource.API: "the API",
    TransactionSource.FORM: "the form",
    TransactionSource.DEMO: "the demo",
}


class RuleRefused(Refused):
    """A rule cannot be saved or used as given; `field` names the input at fault."""


def either(words: Sequence[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


@dataclass(frozen=True)
class Condition(ABC):
    """One condition of a rule; the subclasses are the types the API documents."""

    TYPE: ClassVar[str]

    @abstractmethod
    def holds(self, transaction: Transaction, now: datetime) -> bool: ...

    @abstractmethod
    def clause(self, dialect: str, now: datetime) -> ColumnElement[bool]:
        """The same test as SQL over `transaction`; `dialect` is 'postgresql' or 'sqlite'."""

    @abstractmethod
    def sentence(self) -> str:
        """What must hold, after 'matched because': 'the currency is USD'."""

    @abstractmethod
    def why_not(self, transaction: Transaction, now: datetime) -> str:
        """What the transaction has instead: 'the currency is EUR'."""

    @abstractmethod
    def as_dict(self) -> dict[str, Any]: ...

    def matched(self, transaction: Transaction, now: datetime) -> str:
        """Why it held, for the timeline: the sentence, or the transaction's value where that says more."""
        return self.sentence()


# --- reading raw input -------------------------------------------------------------------


def refuse(field: str, message: str) -> RuleRefused:
    return RuleRefused(message, field=field)


def only_keys(raw: dict[str, Any], allowed: tuple[str, ...], field: str) -> None:
    unknown = sorted(set(raw) - {"type", *allowed})
    if unknown:
        raise refuse(f"{field}.{unknown[0]}", f"Unknown field {unknown[0]!r} in a {raw['type']} condition.")
    missing = [key for key in allowed if key not in raw]
    if missing:
        raise refuse(f"{field}.{missing[0]}", f"A {raw['type']} condition needs {missing[0]!r}.")


def read_values(raw: Any, field: str, clean: Callable[[Any], str], what: str) -> tuple[str, ...]:
    """A non-empty list, each value cleaned, duplicates dropped, in order."""
    if not isinstance(raw, list) or not raw:
        raise refuse(field, f"values must be a non-empty list of {what}.")
    if len(raw) > MAX_VALUES:
        raise refuse(field, f"At most {MAX_VALUES} values in one condition.")
    cleaned: list[str] = []
    for value in raw:
        if not isinstance(value, str):
            raise refuse(field, f"values must be a list of {what}; {value!r} is not text.")
        try:
            text = clean(value)
        except ValueError as error:
            raise refuse(field, str(error)) from None
        if text not in cleaned:
            cleaned.append(text)
    return tuple(cleaned)


def read_boolean(raw: Any, field: str) -> bool:
    if not isinstance(raw, bool):
        raise refuse(field, "value must be true or false.")
    return raw


def read_bound(raw: Any, field: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise refuse(field, "Amounts are whole numbers of the currency's smallest unit (5000: USD 50.00).")
    if not 0 <= raw <= money.MAX_AMOUNT:
        raise refuse(field, f"Amounts are between 0 and {money.MAX_AMOUNT}.")
    return raw


def clean_currency(raw: str) -> str:
    try:
        return money.normalize_currency(raw)
    except money.AmountError as error:
        raise ValueError(str(error)) from None


def clean_country_code(raw: str) -> str:
    code = clean_country(raw)
    if code is None:
        raise ValueError("A country code cannot be empty.")
    return code


def clean_category(raw: str) -> str:
    if raw not in declines.CATEGORIES:
        raise ValueError(f"{raw!r} is not a decline category; use {either(declines.CATEGORIES)}.")
    return raw


def clean_decline_code(raw: str) -> str:
    code = raw.strip().lower()
    if not _DECLINE_CODE.fullmatch(code):
        raise ValueError(f"{raw!r} is not a decline code (such as insufficient_funds).")
    return code


def clean_source(raw: str) -> str:
    if raw not in SOURCES:
        raise ValueError(f"{raw!r} is not a source; use {either(SOURCES)}.")
    return raw
