"""Read an organization's audit events for the page and the CSV export."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, and_, or_, select

from recovery.audit_log.sentences import KINDS, actions_of_kind
from recovery.models import AuditEvent, Transaction, User
from recovery.models.base import DbSession
from recovery.refusals import Refused
from recovery.transactions.validation import clean_ref

PAGE_SIZE = 50


class FilterRefused(Refused, ValueError):
    """A filter value the page cannot use; the message says which and why."""

    status = 400
    field: str

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message, field=field)


@dataclass(frozen=True)
class AuditFilters:
    """What the reader asked for; every value already checked."""

    actor: str = ""  # "", "user:<id>", "token" or "system"
    kind: str = ""
    start: date | None = None
    end: date | None = None
    ref: str = ""

    @property
    def is_empty(self) -> bool:
        return not (self.actor or self.kind or self.start or self.end or self.ref)


def _date(raw: str, field: str, label: str) -> date | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise FilterRefused(
            f"The {label} date must be a date like 2026-12-07; got “{raw[:40]}”.", field
        ) from None


def parse_filters(args: Mapping[str, str]) -> AuditFilters:
    """The filters in a query string, or FilterRefused for the first one that cannot be used."""
    actor = (args.get("actor") or "").strip()
    if actor and actor not in ("token", "system"):
        number = actor.removeprefix("user:")
        if not (actor.startswith("user:") and number.isascii() and number.isdigit() and len(number) < 19):
            raise FilterRefused("Choose who did it from the list.", "actor")
    kind = (args.get("kind") or "").strip()
    if kind and kind not in KINDS:
        raise FilterRefused("Choose what kind of action from the list.", "kind")
    start = _date(args.get("from") or "", "from", "“from”")
    end = _date(args.get("to") or "", "to", "“to”")
    if start and end and start > end:
        raise FilterRefused(
            f"The “from” date ({start:%d %b %Y}) is after the “to” date ({end:%d %b %Y}): swap them.", "from"
        )
    raw_ref = (args.get("ref") or "").strip()
    ref = ""
    if raw_ref:
        try:
            ref = clean_ref(raw_ref)
        except ValueError as error:
            raise FilterRefused(f"Transaction reference: {error}", "ref") from None
    return AuditFilters(actor=actor, kind=kind, start=start, end=end, ref=ref)


def _local_midnight(day: date, tz: str) -> datetime:
    return datetime.combine(day, time(), tzinfo=ZoneInfo(tz)).astimezone(UTC)


def query(organization_id: int, filters: AuditFilters, tz: str) -> Select[AuditEvent, str]:
    """Matching events newest first, each with its transaction's reference; dates are days in `tz`."""
    stmt = (
        select(AuditEvent, Transaction.transaction_ref)
        .outerjoin(Transaction, Transaction.id == AuditEvent.transaction_id)
        .where(AuditEvent.organization_id == organization_id)
    )
    if filters.actor == "token":
        stmt = stmt.where(AuditEvent.actor_api_token_id.is_not(None))
    elif filters.actor == "system":
        stmt = stmt.where(AuditEvent.actor_user_id.is_(None), AuditEvent.actor_api_token_id.is_(None))
    elif filters.actor:
        stmt = stmt.where(AuditEvent.actor_user_id == int(filters.actor.removeprefix("user:")))
    if filters.kind:
        exact, prefixes, others = actions_of_kind(filters.kind)
        matches: ColumnElement[bool] = AuditEvent.action.in_(exact)
        if prefixes:
            # "user.signed_in" starts like the users' actions but is a sign-in: listed kinds win.
            by_prefix = and_(
                or_(*(AuditEvent.action.startswith(p, autoescape=True) for p in prefixes)),
                AuditEvent.action.not_in(others),
            )
            matches = or_(matches, by_prefix)
        stmt = stmt.where(matches)
    if filters.start:
        stmt = stmt.where(AuditEvent.created_at >= _local_midnight(filters.start, tz))
    if filters.end:
        stmt = stmt.where(AuditEvent.created_at < _local_midnight(filters.end + timedelta(days=1), tz))
    if filters.ref:
        stmt = stmt.where(
            Transaction.transaction_ref == filters.ref, Transaction.organization_id == organization_id
        )
    # By time, not id: some events are recorded with the time they happened (a Stripe event's).
    return stmt.order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def cursor(event: AuditEvent) -> str:
    """The link to the events after `event`: its time in microseconds and its id."""
    micros = (event.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}-{event.id}"


def parse_cursor(raw: str) -> tuple[datetime, int] | None:
    if not raw:
        return None
    micros, _, event_id = raw.partition("-")
    if not (micros.isascii() and micros.isdigit() and event_id.isascii() and event_id.isdigit()):
        raise FilterRefused("This page link is broken; start again from the first page.", "before")
    if len(micros) > 17 or len(event_id) > 18:
        raise FilterRefused("This page link is broken; start again from the first page.", "before")
    return _EPOCH + timedelta(microseconds=int(micros)), int(event_id)


@dataclass(frozen=True)
class Page:
    rows: list[tuple[AuditEvent, str | None]]
    next_before: str | None


def page(session: DbSession, organization_id: int, filters: AuditFilters, tz: str, before: str = "") -> Page:
    """One page of events, newest first, after the cursor `before`; and the next page's cursor."""
    stmt = query(organization_id, filters, tz)
    after = parse_cursor(before)
    if after is not None:
        at, event_id = after
        stmt = stmt.where(
            or_(AuditEvent.created_at < at, and_(AuditEvent.created_at == at, AuditEvent.id < event_id))
        )
    rows: list[tuple[AuditEvent, str | None]] = [
        (row[0], row[1]) for row in session.execute(stmt.limit(PAGE_SIZE + 1))
    ]
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return Page(rows, cursor(rows[-1][0]) if more and rows else None)


def stream(
    session: DbSession, organization_id: int, filters: AuditFilters, tz: str
) -> Iterator[tuple[AuditEvent, str | None]]:
    """Every matching event, newest first, read in chunks so a long log never sits in memory."""
    result = session.execute(query(organization_id, filters, tz).execution_options(yield_per=500))
    for row in result:
        yield row[0], row[1]


def actors(session: DbSession, organization_id: int) -> list[tuple[str, str]]:
    """The actor filter's choices: each of the organization's users, then API tokens and the system."""
    users = session.execute(
        select(User.id, User.email).where(User.organization_id == organization_id).order_by(User.email)
    )
    return [
        *((f"user:{user_id}", email) for user_id, email in users),
        ("token", "Any API token"),
        ("system", "The system (workers, Stripe, customers)"),
    ]
