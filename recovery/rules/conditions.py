"""The conditions a rule can put on a failure, each in three forms that must agree.

A condition is stored as a small JSON object (`{"type": "currency_in",
"values": ["usd"]}`) and read back here into a `Condition`, which answers:

- `holds(transaction, now)`: the Python test, for one transaction as it starts;
- `clause(dialect, now)`: the same test as a SQL expression over `transaction`,
  for the preview's one statement over thousands of failures;
- `sentence()` and `why_not(transaction, now)`: the words for the timeline and
  the "test a transaction" page.

tests/rules/test_preview.py checks that the first two agree on random data.
Every bad input is a `RuleRefused` naming its field (`conditions[1].values`),
so a form shows it next to the field and the API in `fields`.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, and_, false, func, or_, true
from sqlalchemy.orm import InstrumentedAttribute

from recovery import declines, money
from recovery.models import Transaction
from recovery.rules.condition_base import (
    SOURCE_LABELS,
    SOURCES,
    Condition,
    RuleRefused,
    clean_category,
    clean_country_code,
    clean_currency,
    clean_decline_code,
    clean_source,
    either,
    only_keys,
    read_boolean,
    read_bound,
    read_values,
    refuse,
)
from recovery.transactions.validation import has_control_characters

# The names other modules take from here (the shared ones live in condition_base).
__all__ = [
    "SOURCES",
    "SOURCE_LABELS",
    "TYPES",
    "Condition",
    "RuleRefused",
    "read_condition",
    "read_conditions",
]

# More than this many conditions on one rule is a rule set that wants splitting.
MAX_CONDITIONS = 20
MAX_DAYS = 3650
# Metadata keys a rule may name: what merchants use (order_id, plan, "Store name"); no
# quotes or backslashes, which a JSON path would have to escape.
_METADATA_KEY = re.compile(r"[^\"\\\x00-\x1f\x7f]{1,100}")


# --- the conditions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Amount(Condition):
    """The amount, in one currency's minor units, within [min, max] (either may be open)."""

    TYPE = "amount"
    currency: str
    min: int | None
    max: int | None

    @classmethod
    def read(cls, raw: dict[str, Any], field: str) -> Amount:
        unknown = sorted(set(raw) - {"type", "currency", "min", "max"})
        if unknown:
            raise refuse(f"{field}.{unknown[0]}", f"Unknown field {unknown[0]!r} in an amount condition.")
        if not isinstance(raw.get("currency"), str):
            raise refuse(f"{field}.currency", "An amount condition needs its currency, such as usd.")
        try:
            currency = clean_currency(raw["currency"])
        except ValueError as error:
            raise refuse(f"{field}.currency", str(error)) from None
        low, high = read_bound(raw.get("min"), f"{field}.min"), read_bound(raw.get("max"), f"{field}.max")
        if low is None and high is None:
            raise refuse(f"{field}.min", "Give a minimum, a maximum or both.")
        if low is not None and high is not None and low > high:
            raise refuse(f"{field}.min", "The minimum is above the maximum.")
        return cls(currency, low, high)

    def holds(self, transaction: Transaction, now: datetime) -> bool:
        return (
            transaction.currency == self.currency
            and (self.min is None or transaction.amount >= self.min)
            and (self.max is None or transaction.amount <= self.max)
        )

    def clause(self, dialect: str, now: datetime) -> ColumnElement[bool]:
        parts = [Transaction.currency == self.currency]
        if self.min is not None:
            parts.append(Transaction.amount >= self.min)
        if self.max is not None:
            parts.append(Transaction.amount <= self.max)
        return and_(*parts)

    def _money(self, amount: int) -> str:
        return money.format_amount(amount, self.currency)

    def sentence(self) -> str:
        if self.min is not None and self.max is not None:
            return f"the amount is between {self._money(self.min)} and {self._money(self.max)}"
        if self.min is not None:
            return f"the amount is at least {self._money(self.min)}"
        assert self.max is not None
        return f"the amount is at most {self._money(self.max)}"

    def why_not(self, transaction: Transaction, now: datetime) -> str:
        if transaction.currency != self.currency:
            return f"the currency is {transaction.currency.upper()}, not {self.currency.upper()}"
        return f"the amount is {money.format_amount(transaction.amount, transaction.currency)}"

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "currency": self.currency, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class InList(Condition):
    """A column's value is one of `values` (`negated`: is none of them; an unknown value counts as none)."""

    values: tuple[str, ...]
    WHAT: ClassVar[str]
    NEGATED: ClassVar[bool] = False

    @classmethod
    def read(cls, raw: dict[str, Any], field: str) -> InList:
        only_keys(raw, ("values",), field)
        return cls(read_values(raw["values"], f"{field}.values", cls.clean, cls.WHAT))

    @staticmethod
    @abstractmethod
    def clean(raw: str) -> str:
        """One value as stored; ValueError saying why it cannot be."""

    @abstractmethod
    def value_of(self, transaction: Transaction) -> str | None: ...

    @abstractmethod
    def column_clause(self) -> ColumnElement[bool]:
        """The SQL for 'is one of the values' (never true for NULL)."""

    def holds(self, transaction: Transaction, now: datetime) -> bool:
        found = self.value_of(transaction) in self.values
        return not found if self.NEGATED else found

    def clause(self, dialect: str, now: datetime) -> ColumnElement[bool]:
        inside = self.column_clause()
        # NOT (x IN ...) is NULL for a NULL x: coalesce, so that "unknown" is "not in".
        return ~func.coalesce(inside, false()) if self.NEGATED else inside

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "values": list(self.values)}


@dataclass(frozen=True)
class CurrencyIn(InList):
    TYPE = "currency_in"
    WHAT = "currency codes (usd, eur)"

    @staticmethod
    def clean(raw: str) -> str:
        return clean_currency(raw)

    def value_of(self, transaction: Transaction) -> str | None:
        return transaction.currency

    def column_clause(self) -> ColumnElement[bool]:
        return Transaction.currency.in_(self.values)

    def sentence(self) -> str:
        return f"the currency is {either([v.upper() for v in self.values])}"

    def why_not(self, transaction: Transaction, now: datetime) -> str:
        return f"the currency is {transaction.currency.upper()}"


@dataclass(frozen=True)
class CountryIn(InList):
    TYPE = "country_in"
    WHAT = "ISO 3166 two-letter country codes (US, DE)"

    @staticmethod
    def clean(raw: str) -> str:
        return clean_country_code(raw)

    def value_of(self, transaction: Transaction) -> str | None:
        return transaction.customer_country

    def column_clause(self) -> ColumnElement[bool]:
        return Transaction.customer_country.in_(self.values)

    def sentence(self) -> str:
        return f"the customer's country is {either(self.values)}"

    def why_not(self, transaction: Transaction, now: datetime) -> str:
        if not transaction.customer_country:
            return "the customer's country is not known"
        return f"the customer's country is {transaction.customer_country}"


@dataclass(frozen=True)
class CountryNotIn(CountryIn):
    """The customer's country is none of the values; an unknown country is none of them."""

    TYPE = "country_not_in"
    NEGATED = True

    def sentence(self) -> str:
        return f"the customer's country is not {either(self.values)}"


@dataclass(frozen=True)
class DeclineCategoryIn(InList):
    TYPE = "decline_category_in"
    WHAT = f"decline categories ({', '.join(declines.CATEGORIES)})"

    @staticmethod
    def clean(raw: str) -> str:
        return clean_category(raw)

    def value_of(self, transaction: Transaction) -> str | None:
        return declines.category(transaction.failure_code)

    def column_clause(self) -> ColumnElement[bool]:
        # The category is a function of the code: known codes by list, `unknown` the rest.
        known = [code for name in self.values if name != declines.UNKNOWN for code in declines.codes_in(name)]
        parts: list[ColumnElement[bool]] = [Transaction.failure_code.in_(known)] if known else []
        if declines.UNKNOWN in self.values:
            others = [code for code, name in declines.CODE_CATEGORY.items() if name != declines.UNKNOWN]
            parts.append(or_(Transaction.failure_code.is_(None), Transaction.failure_code.not_in(others)))
        return or_(*parts)

    def sentence(self) -> str:
        labels = [f"“{declines.category_label(v)}”" for v in self.values]
        return f"the decline category is {either(labels)}"

    def matched(self, transaction: Transaction, now: datetime) -> str:
        return self.why_not(transaction, now)

    def why_not(self, transaction: Transaction, now: datetime) -> str:
        label = declines.category_label(transaction.decline_category)
        code = f" ({transaction.failure_code})" if transaction.failure_code else ""
        return f"the decline category is “{label}”{code}"


@dataclass(frozen=True)
class DeclineCodeIn(InList):
    TYPE = "decline_code_in"
    WHAT = "decline codes (insufficient_funds)"

    @staticmethod
    def clean(raw: str) -> str:
        return clean_decline_code(raw)

    def value_of(self, transaction: Transaction) -> str | None:
        return transaction.failure_code

    def column_clause(self) -> ColumnElement[bool]:
        return Transaction.failure_code.in_(self.values)

    def sentence(self) -> str:
        return f"the decline code is {either(self.values)}"

    def why_not(self, transaction: Transaction, now: datetime) -> str:
        if not transaction.failure_code:
            return "the failure has no decline code"
        return f"the decline code is {transaction.failure_code}"


@dataclass(frozen=True)
class SourceIn(InList):
    TYPE = "source_in"
    WHAT = f"sources ({', '.join(SOURCES)})"

    @staticmethod
    def clean(raw: str) -> str:
        return clean_source(raw)

    def value_of(self, transaction: Transaction) -> str | None:
        return transaction.source

    def column_clause(self) -> ColumnElement[bool]:
        return Transaction.source.in_(self.values)

    def sentence(self) -> str:
        return f"the failure came from {either([SOURCE_LABELS.get(v, v) for v in self.values])}"

    def why_not(self, transaction: Transaction, now: datetime) -> str:
        return f"the failure came from {SOURCE_LABELS.get(transaction.source, transaction.source)}"


@dataclass(frozen=True)
class MetadataEquals(Condition):
    """The metadata has `key` with the text `value` (a number or true/false there never matches text)."""

    TYPE = "metadata_equals"
    key: str
    value: str

    @classmethod
    def read(cls, raw: dict[str, Any], field: str) -> MetadataEquals:
        only_keys(raw, ("key", "value"), field)
        key, value = raw["key"], raw["value"]
        if not isinstance(key, str) or not _METADATA_KEY.fullmatch(key) or has_control_characters(key):
            raise refuse(f"{field}.key", "key must be 1 to 100 characters, without quotes or backslashes.")
        if not isinstance(value, str) or len(value) > 500 or has_control_characters(value):
            raise refuse(f"{field}.value", "value must be text of at most 500 characters.")
        return cls(key, value)

    def holds(self, transaction: Transaction, now: datetime) -> bool:
        found = (transaction.meta or {}).get(self.key)
        return isinstance(found, str) and found == self.value

    def clause(self, dialect: str, now: datetime) -> ColumnElement[bool]:
        text: ColumnElement[bool] = Transaction.meta[self.key].as_string() == self.value
        # Only a JSON string matches: ->> and json_extract give numbers and booleans as
        # text or numbers that would compare equal to "3" or "1". (The key has no quotes.)
        if dialect == "postgresql":
            kind = func.json_typeof(Transaction.meta[self.key]) == "string"
        else:
            kind = func.json_type(Transaction.meta, f'$."{self.key}"') == "text"
        return and_(text, kind)  # the type only where the text matched: one JSON parse per row

    def sentence(self) -> str:
        return f"the metadata “{self.key}” is “{self.value}”"

    def why_not(self, transaction: Transaction, now: datetime) -> str:
        meta = transaction.meta or {}
        if self.key not in meta:
            return f"the metadata has no “{self.key}”"
        return f"the metadata “{self.key}” is “{meta[self.key]}”"

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "key": self.key, "value": self.value}


@dataclass(frozen=True)
class HasContact(Condition):
    """The customer has (or, `value` false, has no) email address / phone number."""

    value: bool
    NOUN: ClassVar[str]
    ARTICLE: ClassVar[str]

    @classmethod
    def read(cls, raw: dict[str, Any], field: str) -> HasContact:
        only_keys(raw, ("value",), field)
        return cls(read_boolean(raw["value"], f"{field}.value"))

    @abstractmethod
    def address(self, transaction: Transaction) -> str | None: ...

    @abstractmethod
    def column(self) -> InstrumentedAttribute[str | None]: ...

    def holds(self, transaction: Transaction, now: datetime) -> bool:
        return bool(self.address(transaction)) == self.value

    def clause(self, dialect: str, now: datetime) -> ColumnElement[bool]:
        column = self.column()
        present = and_(column.is_not(None), column != "")
        return present if self.value else ~present

    def sentence(self) -> str:
        return f"the customer {'has ' + self.ARTICLE if self.value else 'has no'} {self.NOUN}"

    def why_not(self, transaction: Transaction, now: datetime) -> str:
        return f"the customer {'has no' if self.value else 'has ' + self.ARTICLE} {self.NOUN}"

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "value": self.value}


@dataclass(frozen=True)
class HasEmail(HasContact):
    TYPE = "has_email"
    NOUN = "email address"
    ARTICLE = "an"

    def address(self, transaction: Transaction) -> str | None:
        return transaction.customer_email

    def column(self) -> InstrumentedAttribute[str | None]:
        return Transaction.customer_email


@dataclass(frozen=True)
class HasPhone(HasContact):
    TYPE = "has_phone"
    NOUN = "phone number"
    ARTICLE = "a"

    def address(self, transaction: Transaction) -> str | None:
        return transaction.customer_phone

    def column(self) -> InstrumentedAttribute[str | None]:
        return Transaction.customer_phone


@dataclass(frozen=True)
class FailedWithinDays(Condition):
    """The payment failed at most `days` days before now."""

    TYPE = "failed_within_days"
    days: int

    @classmethod
    def read(cls, raw: dict[str, Any], field: str) -> FailedWithinDays:
        only_keys(raw, ("days",), field)
        days = raw["days"]
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
            raise refuse(f"{field}.days", f"days must be a whole number from 1 to {MAX_DAYS}.")
        return cls(days)

    def since(self, now: datetime) -> datetime:
        return now - timedelta(days=self.days)

    def holds(self, transaction: Transaction, now: datetime) -> bool:
        return transaction.failed_at is not None and transaction.failed_at >= self.since(now)

    def clause(self, dialect: str, now: datetime) -> ColumnElement[bool]:
        return Transaction.failed_at >= self.since(now)

    def sentence(self) -> str:
        return f"the payment failed in the last {self.days} day{'s' if self.days != 1 else ''}"

    def why_not(self, transaction: Transaction, now: datetime) -> str:
        days = (now - transaction.failed_at).days if transaction.failed_at else None
        return "the failure has no date" if days is None else f"the payment failed {days} days ago"

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "days": self.days}


_READERS: dict[str, Callable[[dict[str, Any], str], Condition]] = {
    kind.TYPE: kind.read  # type: ignore[attr-defined]
    for kind in (
        Amount,
        CurrencyIn,
        CountryIn,
        CountryNotIn,
        DeclineCategoryIn,
        DeclineCodeIn,
        SourceIn,
        MetadataEquals,
        HasEmail,
        HasPhone,
        FailedWithinDays,
    )
}
TYPES = tuple(_READERS)


def read_condition(raw: Any, field: str) -> Condition:
    """One condition from its JSON; RuleRefused naming `field` (or a part of it) if it is not valid."""
    if not isinstance(raw, dict):
        raise refuse(field, 'A condition is an object such as {"type": "currency_in", "values": ["usd"]}.')
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in _READERS:
        raise refuse(f"{field}.type", f"Unknown condition type {kind!r}; use one of {', '.join(TYPES)}.")
    return _READERS[kind](raw, field)


def read_conditions(raw: Any, field: str = "conditions") -> list[Condition]:
    """A rule's conditions from JSON (all must hold; none: always)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise refuse(field, "conditions must be a list.")
    if len(raw) > MAX_CONDITIONS:
        raise refuse(field, f"At most {MAX_CONDITIONS} conditions on one rule.")
    return [read_condition(item, f"{field}[{index}]") for index, item in enumerate(raw)]


def all_hold(conditions: Sequence[Condition], transaction: Transaction, now: datetime) -> bool:
    return all(condition.holds(transaction, now) for condition in conditions)


def all_clause(conditions: Sequence[Condition], dialect: str, now: datetime) -> ColumnElement[bool]:
    """Every condition as one SQL expression, JSON reads last (cheap tests rule most rows out); none: TRUE."""
    ordered = sorted(conditions, key=lambda condition: isinstance(condition, MetadataEquals))
    return and_(*(c.clause(dialect, now) for c in ordered)) if ordered else true()
