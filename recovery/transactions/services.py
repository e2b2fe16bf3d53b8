"""Transactions: create, edit, and list with keyset pagination (the timeline: timeline.py).

Plain functions over a SQLAlchemy session; the caller's boundary commits.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Select, func, select, tuple_
from sqlalchemy.exc import IntegrityError

from recovery import audit, declines, money
from recovery.audit import Actor
from recovery.models import (
    Organization,
    Transaction,
    TransactionSource,
)
from recovery.models.base import DbSession
from recovery.models.transaction import TransactionStatus
from recovery.refusals import Refused
from recovery.transactions import search
from recovery.transactions.validation import (
    CONTACT_FIELDS,
    MAX_LENGTHS,
    Cleaned,
    clean_contact,
    clean_transaction,
    has_control_characters,
    strip_deceptive,
)

PAGE_SIZE = 50
COUNT_CAP = 1000
SORTS = {"date": Transaction.failed_at, "amount": Transaction.amount}
# The query-string arguments that make up the list's filter and order; the page cursor is not one.
FILTER_ARGS = ("status", "q", "currency", "category", "date_from", "date_to", "sort", "order")


class InvalidTransaction(Refused):
    """Fields that failed validation; `errors` maps field name to message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(f"Some fields are not valid: {', '.join(errors)}.")
        self.errors = errors

    @property
    def fields(self) -> dict[str, str] | None:
        return self.errors


class DuplicateRef(InvalidTransaction):
    """A transaction with this `transaction_ref` already exists in the organization.

    An InvalidTransaction too, so a form shows it next to the reference; the API
    answers 409 with the reference it was given.
    """

    status = 409

    def __init__(self, ref: str) -> None:
        super().__init__({"transaction_ref": "A transaction with this reference already exists."})
        self.message = f"A transaction with transaction_ref {ref!r} already exists."

    @property
    def fields(self) -> dict[str, str] | None:
        return None


# --- create and edit -------------------------------------------------------


def create_transaction(
    session: DbSession,
    actor: Actor,
    raw: dict[str, Any],
    *,
    source: str = TransactionSource.FORM,
    major_units: bool = False,
    amount_field: str = "amount",
    webhook_event_id: int | None = None,
    now: datetime | None = None,
) -> Transaction:
    """Validate and add one transaction; raise InvalidTransaction or DuplicateRef.

    `amount_field`: the name the caller's input gives the amount (the API's
    amount_decimal), so a refusal names what the person sent.
    `webhook_event_id`: the Stripe event it is imported from, linked on its "created" entry.
    `now`: when it is recorded, if not the clock's time (the demo tells a story in the past).
    """
    if source == TransactionSource.STRIPE:
        raw = _without_deceptive_text(raw)
    cleaned = clean_transaction(raw, major_units=major_units)
    if not cleaned.ok:
        raise InvalidTransaction(named(cleaned.errors, amount_field))
    values = dict(cleaned.values)
    values["meta"] = values.pop("metadata")
    transaction = Transaction(organization_id=actor.organization_id, source=source, **values)
    if now is not None:
        transaction.created_at = transaction.updated_at = now
    try:
        with session.begin_nested():
            session.add(transaction)
            session.flush()
    except IntegrityError:
        raise DuplicateRef(values["transaction_ref"]) from None
    audit.record(
        session,
        actor,
        "transaction.created",
        at=now,
        transaction_id=transaction.id,
        target_type="transaction",
        target_id=transaction.transaction_ref,
        webhook_event_id=webhook_event_id,
        source=source,
    )
    return transaction


def named(errors: dict[str, str], amount_field: str) -> dict[str, str]:
    """The validation's messages, the amount's under the name the caller used."""
    fields = dict(errors)
    if amount_field != "amount" and "amount" in fields:
        fields[amount_field] = fields.pop("amount")
    return fields


def _without_deceptive_text(raw: dict[str, Any]) -> dict[str, Any]:
    """Stripe's fields with text-direction and invisible characters removed, rather than refused.

    A name a customer typed at checkout cannot be sent back, and refusing it would
    lose the failed payment; without those characters it shows as what it is.
    """

    def scrubbed(value: Any) -> Any:
        if isinstance(value, str):
            return strip_deceptive(value)
        if isinstance(value, dict):
            return {strip_deceptive(str(k), joiners=False): scrubbed(v) for k, v in value.items()}
        return value

    return {name: scrubbed(value) for name, value in raw.items()}


def update_contact(
    session: DbSession, actor: Actor, transaction: Transaction, raw: dict[str, Any]
) -> list[str]:
    """Change the customer's contact details; return the names of fields that changed."""
    cleaned = Cleaned()
    clean_contact(raw, cleaned)
    if not cleaned.ok:
        raise InvalidTransaction(cleaned.errors)
    changed: dict[str, list[Any]] = {}
    for name in CONTACT_FIELDS:
        new = cleaned.values.get(name)
        old = getattr(transaction, name)
        if new != old:
            changed[name] = [old, new]
            setattr(transaction, name, new)
    if changed:
        audit.record(
            session,
            actor,
            "transaction.contact_updated",
            transaction_id=transaction.id,
            target_type="transaction",
            target_id=transaction.transaction_ref,
            changes=changed,
        )
    return list(changed)


def get_for_org(session: DbSession, organization_id: int, transaction_id: int) -> Transaction | None:
    """The transaction if it belongs to the organization; None hides others' rows."""
    return session.scalar(
        select(Transaction).where(
            Transaction.id == transaction_id, Transaction.organization_id == organization_id
        )
    )


def get_by_ref(session: DbSession, organization_id: int, ref: str) -> Transaction | None:
    if has_control_characters(ref):
        return None  # no transaction has such a reference (clean_ref refuses it)
    return session.scalar(
        select(Transaction).where(
            Transaction.organization_id == organization_id, Transaction.transaction_ref == ref
        )
    )


# --- the list --------------------------------------------------------------


@dataclass
class ListQuery:
    """What the list shows: filters, order and the page cursor, all validated."""

    status: str | None = None
    q: str | None = None
    currency: str | None = None
    category: str | None = None  # a decline category ("Why it failed")
    date_from: date | None = None
    date_to: date | None = None
    sort: str = "date"
    order: str = "desc"
    after: tuple[Any, int] | None = None
    before: tuple[Any, int] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    # Both dates kept as typed, to be shown and fixed; the list is not run for them.
    dates_reversed: bool = False
    # Sort by amount was asked for without a currency: listed by date, the picker marked.
    amount_needs_currency: bool = False

    @classmethod
    def from_args(cls, args: Any) -> ListQuery:  # noqa: C901, PLR0912 -- one branch per filter, read as a table
        """Parse query-string arguments; a bad one is dropped and explained in `errors`.

        Long because each argument has its own rule and message, read best in one place, in order.
        """
        query = cls()
        status = (args.get("status") or "").strip()
        if status:
            if status in TransactionStatus.ALL:
                query.status = status
            else:
                query.errors["status"] = f"Unknown status {status!r}."
        q = (args.get("q") or "").strip()
        if len(q) > MAX_LENGTHS["customer_email"]:
            # Longer than any reference, email or phone: it can match nothing, and cut short it might.
            query.errors["q"] = f"Search for at most {MAX_LENGTHS['customer_email']} characters."
        else:
            query.q = q or None
        currency = (args.get("currency") or "").strip().lower()
        if currency:
            if not (len(currency) == 3 and currency.isalpha()):
                query.errors["currency"] = "Use a three-letter currency code."
            elif currency not in money.known_currencies():
                # Any ISO 4217 code filters, not only those taken at entry today: older rows may hold others.
                query.errors["currency"] = (
                    f"{currency.upper()} is not an ISO 4217 currency code (e.g. USD, EUR)."
                )
            else:
                query.currency = currency
        query.category = _category_arg(args, query.errors)
        for name in ("date_from", "date_to"):
            raw = (args.get(name) or "").strip()
            if raw:
                try:
                    day = date.fromisoformat(raw)
                except ValueError:
                    day = None
                # Out at the ends of the calendar the day after (date_to) overflows.
                if day is None or not 1900 <= day.year <= 9998:
                    query.errors[name] = "Use a date like 2025-01-31."
                else:
                    setattr(query, name, day)
        if query.date_from and query.date_to and query.date_from > query.date_to:
            query.errors["date_to"] = (
                f"'To' ({_day(query.date_to)}) is before 'From' ({_day(query.date_from)}): "
                "swap them to see the transactions that failed between those days."
            )
            query.dates_reversed = True
        if args.get("sort") == "amount" and query.currency is None:
            # ¥5,000 is not more than $49: amounts compare only within one currency.
            if "currency" not in query.errors:
                query.errors["sort"] = (
                    "Choose a currency to sort by amount: amounts in different currencies "
                    "cannot be compared (¥5,000 is not more than $49). Listed by date meanwhile."
                )
            query.amount_needs_currency = True
        elif args.get("sort") in SORTS:
            query.sort = args["sort"]
        if args.get("order") in ("asc", "desc"):
            query.order = args["order"]
        for name in ("after", "before"):
            raw = args.get(name)
            if raw:
                cursor = decode_cursor(raw, query.sort)
                if cursor is None:
                    query.errors["cursor"] = "That page link is no longer valid; showing the first page."
                else:
                    setattr(query, name, cursor)
        return query

    def is_filtered(self) -> bool:
        return any((self.status, self.q, self.currency, self.category, self.date_from, self.date_to))

    def filter_args(self) -> dict[str, str]:
        """The query-string arguments that give this filter and order again (no cursor), as parsed."""
        values = {
            "status": self.status,
            "q": self.q,
            "currency": self.currency,
            "category": self.category,
            "date_from": self.date_from.isoformat() if self.date_from else None,
            "date_to": self.date_to.isoformat() if self.date_to else None,
            "sort": self.sort,
            "order": self.order,
        }
        return {name: value for name, value in values.items() if value}


def _category_arg(args: Any, errors: dict[str, str]) -> str | None:
    """The decline category asked for ("Why it failed"), or None; an unknown one is explained."""
    category = (args.get("category") or "").strip()
    if not category:
        return None
    if category not in declines.CATEGORIES:
        errors["category"] = f"Unknown reason {category!r}: choose one from the list."
        return None
    return category


def _day(day: date) -> str:
    return f"{day.day} {day:%b %Y}"


class ListedTransaction(NamedTuple):
    """One row of the list: the columns it shows, read as a plain tuple.

    Not an ORM object: fifty of those, with their JSON metadata and timestamps
    the list never shows, cost more than the rest of the page. A column the
    list starts to show is added here.
    """

    id: int
    transaction_ref: str
    amount: int
    currency: str
    status: str
    failure_code: str | None
    customer_name: str | None
    customer_email: str | None
    customer_phone: str | None
    failed_at: datetime


LISTED_COLUMNS = tuple(getattr(Transaction, name) for name in ListedTransaction._fields)


@dataclass
class Page:
    rows: list[ListedTransaction]
    next_cursor: str | None
    prev_cursor: str | None
    count: int
    count_capped: bool


# Ours are 20-60 characters (an ISO date or a bigint, and a row id); anything
# much longer is made up, and a deeply nested one would exhaust json's recursion.
CURSOR_MAX_LENGTH = 200


def encode_cursor(transaction: Transaction | ListedTransaction, sort: str) -> str:
    value: Any = transaction.failed_at.isoformat() if sort == "date" else transaction.amount
    raw = json.dumps([value, transaction.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(raw: str, sort: str) -> tuple[Any, int] | None:
    if len(raw) > CURSOR_MAX_LENGTH:
        return None
    try:
        padded = raw + "=" * (-len(raw) % 4)
        value, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not _is_bigint(row_id):
            return None
        if sort == "date":
            moment = datetime.fromisoformat(value)
            # Our cursors always carry the UTC offset; a naive one is forged.
            return (moment, row_id) if moment.tzinfo is not None else None
        if _is_bigint(value):
            return value, row_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    return None


def _is_bigint(value: Any) -> bool:
    """A forged cursor's number must still fit the column, or the query itself fails."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def list_filters(session: DbSession, organization_id: int, query: ListQuery) -> list[ColumnElement[bool]]:
    """The WHERE conditions of the list's filter (no cursor), shared by the list, bulk start and export."""
    filters: list[ColumnElement[bool]] = [Transaction.organization_id == organization_id]
    if query.status:
        filters.append(Transaction.status == query.status)
    if query.q:
        timezone = session.scalar(select(Organization.timezone).where(Organization.id == organization_id))
        filters.append(
            search.search_condition(
                query.q,
                country=search.country_for_timezone(timezone),
                dialect=session.get_bind().dialect.name,
            )
        )
    if query.currency:
        filters.append(Transaction.currency == query.currency)
    if query.category:
        filters.append(search.category_condition(query.category))
    if query.date_from:
        filters.append(Transaction.failed_at >= datetime.combine(query.date_from, time(), UTC))
    if query.date_to:
        end = datetime.combine(query.date_to + timedelta(days=1), time(), UTC)
        filters.append(Transaction.failed_at < end)
    return filters


def list_transactions(
    session: DbSession, organization_id: int, query: ListQuery, *, limit: int | None = None
) -> Page:
    """One page (`limit` rows, default PAGE_SIZE) of the transactions, by keyset (never OFFSET)."""
    limit = limit or PAGE_SIZE
    if query.dates_reversed:
        # No day is both after 'From' and before 'To': say so (the page does), never query.
        return Page(rows=[], next_cursor=None, prev_cursor=None, count=0, count_capped=False)
    key = SORTS[query.sort]
    filters = list_filters(session, organization_id, query)
    descending = query.order == "desc"
    backwards = query.before is not None and query.after is None
    cursor = query.before if backwards else query.after
    forward_desc = descending != backwards  # walking back flips the order
    # Capped, so it stays cheap however many rows match; it rides along with the
    # page as a scalar subquery (computed once) to save a round trip.
    count_stmt = _capped_count(filters, COUNT_CAP)
    stmt = select(*LISTED_COLUMNS, count_stmt.scalar_subquery()).where(*filters)
    if cursor is not None:
        value, row_id = cursor
        if forward_desc:
            stmt = stmt.where(tuple_(key, Transaction.id) < tuple_(value, row_id))
        else:
            stmt = stmt.where(tuple_(key, Transaction.id) > tuple_(value, row_id))
    order = (key.desc(), Transaction.id.desc()) if forward_desc else (key.asc(), Transaction.id.asc())
    result = session.execute(stmt.order_by(*order).limit(limit + 1)).all()
    rows = [ListedTransaction(*row[:-1]) for row in result]
    # An empty page has no row to carry the count: it is 0, unless a stale
    # cursor walked past rows that still match.
    count = result[0][-1] if result else (session.scalar(count_stmt) or 0 if cursor else 0)
    has_more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    has_next = has_more if not backwards else True
    has_prev = (cursor is not None) if not backwards else has_more
    return Page(
        rows=rows,
        next_cursor=encode_cursor(rows[-1], query.sort) if rows and has_next else None,
        prev_cursor=encode_cursor(rows[0], query.sort) if rows and has_prev else None,
        count=min(count, COUNT_CAP),
        count_capped=count > COUNT_CAP,
    )


def _capped_count(filters: list[ColumnElement[bool]], cap: int) -> Select[int]:
    """Count the rows that match, stopping at cap + 1: as cheap for a million matches as for cap."""
    return select(func.count()).select_from(select(Transaction.id).where(*filters).limit(cap + 1).subquery())


def matching_ids(session: DbSession, organization_id: int, query: ListQuery, *, limit: int) -> list[int]:
    """The ids of the transactions the list's filter matches, in the list's order, at most `limit`.

    Every page of the list at once: the cursor is ignored. Ids only, never ORM
    objects, so thousands of them come back in a few milliseconds.
    """
    key = SORTS[query.sort]
    descending = query.order == "desc"
    order = (key.desc(), Transaction.id.desc()) if descending else (key.asc(), Transaction.id.asc())
    stmt = (
        select(Transaction.id)
        .where(*list_filters(session, organization_id, query))
        .order_by(*order)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def count_matching(session: DbSession, organization_id: int, query: ListQuery, *, cap: int) -> int:
    """How many transactions the list's filter matches, counting no further than cap + 1."""
    return session.scalar(_capped_count(list_filters(session, organization_id, query), cap)) or 0
