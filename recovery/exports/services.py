"""What each export holds, and the stream that writes it and records it in the audit log.

Every list the dashboard shows exports the rows its filter matches (all pages,
not the one on screen), in the merchant's terms: amounts in the currency's
major units beside the currency ("50.00", "usd"; 5000 for JPY), times in ISO
8601 UTC ending in Z under a column name that says so (`failed_at_utc`).

Rows are read through a server-side cursor (PostgreSQL) `YIELD_PER` at a time
and written a chunk at a time, so an export of a million rows holds no more
memory than one of a thousand (bench/export_csv.py measures it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Select, select

from recovery import audit, money
from recovery.audit import Actor
from recovery.exports.writer import csv_chunks
from recovery.logs import get_logger
from recovery.models import AttemptStatus, Message, Provider, RecoveryAttempt, Transaction
from recovery.models.base import DbSession
from recovery.refusals import Refused
from recovery.transactions import services as transactions
from recovery.unit_of_work import commit_now

log = get_logger("recovery.exports")

# Rows fetched from the database per round trip.
YIELD_PER = 1000


class ExportRefused(Refused):
    """A filter the export cannot use; `message` says which and how to fix it (HTTP 400)."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field=field)


@dataclass(frozen=True)
class Export:
    """One export, ready to stream: its name, header, query and how a row becomes cells."""

    name: str  # "transactions": the file's name and the audit action (export.transactions)
    header: Sequence[str]
    stmt: Select[*tuple[Any, ...]]  # any row shape; `cells` reads it
    cells: Callable[[Any], Sequence[object]]
    filters: dict[str, str] = field(default_factory=dict)

    def filename(self, today: date) -> str:
        return f"{self.name}-{today.isoformat()}.csv"


def utc(moment: datetime | None) -> str:
    """ISO 8601 in UTC with a Z: 2025-01-19T10:30:00Z. Empty for none."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def major(amount: int | None, currency: str) -> str:
    """The amount as people write it in `currency`: 5000 usd → 50.00, 5000 jpy → 5000."""
    return "" if amount is None else money.format_major(amount, currency)


# --- the three lists ------------------------------------------------------

TRANSACTION_HEADER = (
    "transaction_ref",
    "amount",
    "currency",
    "status",
    "failure_code",
    "failure_message",
    "customer_name",
    "customer_email",
    "customer_phone",
    "customer_country",
    "customer_locale",
    "failed_at_utc",
    "recovered_at_utc",
    "recovered_amount",
    "source",
    "metadata",
)
_T = Transaction


def _transaction_cells(row: Any) -> Sequence[object]:
    return (
        row.transaction_ref,
        major(row.amount, row.currency),
        row.currency,
        row.status,
        row.failure_code,
        row.failure_message,
        row.customer_name,
        row.customer_email,
        row.customer_phone,
        row.customer_country,
        row.customer_locale,
        utc(row.failed_at),
        utc(row.recovered_at),
        major(row.recovered_amount, row.currency),
        row.source,
        json.dumps(row.metadata, ensure_ascii=False, sort_keys=True) if row.metadata else "",
    )


def transactions_export(session: DbSession, organization_id: int, args: Mapping[str, Any]) -> Export:
    """The transactions the list's filter in `args` matches, in the list's order; ExportRefused if bad.

    The list's own parsing and WHERE clause, so the file holds what the list
    shows on all its pages. A page cursor, if any, is ignored.
    """
    query = transactions.ListQuery.from_args({name: args.get(name) for name in transactions.FILTER_ARGS})
    if query.errors:
        name = next(iter(query.errors))
        raise ExportRefused(" ".join(query.errors.values()), name)
    key = transactions.SORTS[query.sort]
    order = (key.desc(), _T.id.desc()) if query.order == "desc" else (key.asc(), _T.id.asc())
    stmt = (
        select(
            _T.transaction_ref,
            _T.amount,
            _T.currency,
            _T.status,
            _T.failure_code,
            _T.failure_message,
            _T.customer_name,
            _T.customer_email,
            _T.customer_phone,
            _T.customer_country,
            _T.customer_locale,
            _T.failed_at,
            _T.recovered_at,
            _T.recovered_amount,
            _T.source,
            _T.meta.label("metadata"),
        )
        .where(*transactions.list_filters(session, organization_id, query))
        .order_by(*order)
    )
    return Export("transactions", TRANSACTION_HEADER, stmt, _transaction_cells, query.filter_args())


RECOVERY_HEADER = (
    "transaction_ref",
    "amount",
    "currency",
    "channel",
    "status",
    "messages_sent",
    "started_at_utc",
    "next_send_at_utc",
    "clicked_at_utc",
    "completed_at_utc",
    "expires_at_utc",
)


def _recovery_cells(row: Any) -> Sequence[object]:
    return (
        row.transaction_ref,
        major(row.amount, row.currency),
        row.currency,
        row.channel,
        row.status,
        row.messages_sent,
        utc(row.created_at),
        utc(row.next_send_at),
        utc(row.clicked_at),
        utc(row.completed_at),
        utc(row.expires_at),
    )


def recoveries_export(session: DbSession, organization_id: int, args: Mapping[str, Any]) -> Export:
    """Every recovery attempt (optionally of one status), newest first, as the Recoveries list."""
    status = (args.get("status") or "").strip()
    if status and status not in AttemptStatus.ALL:
        raise ExportRefused(
            f"Unknown recovery status {status[:40]!r}; use one of: {', '.join(AttemptStatus.ALL)}.", "status"
        )
    A = RecoveryAttempt
    stmt = (
        select(
            _T.transaction_ref,
            _T.amount,
            _T.currency,
            A.channel,
            A.status,
            A.messages_sent,
            A.created_at,
            A.next_send_at,
            A.clicked_at,
            A.completed_at,
            A.expires_at,
        )
        .join(_T, _T.id == A.transaction_id)
        .where(A.organization_id == organization_id)
        .order_by(A.id.desc())
    )
    if status:
        stmt = stmt.where(A.status == status)
    return Export("recoveries", RECOVERY_HEADER, stmt, _recovery_cells, {"status": status} if status else {})


OUTBOX_HEADER = (
    "created_at_utc",
    "sent_at_utc",
    "channel",
    "recipient",
    "subject",
    "text",
    "transaction_ref",
    "message_number",
    "status",
)


def _outbox_cells(row: Any) -> Sequence[object]:
    return (
        utc(row.created_at),
        utc(row.sent_at),
        row.channel,
        row.recipient,
        row.subject,
        row.body_text,
        row.transaction_ref,
        row.step + 1,
        row.status,
    )


def outbox_export(session: DbSession, organization_id: int, args: Mapping[str, Any]) -> Export:
    """Every message of the development outbox, newest first, as the Outbox page lists them."""
    stmt = (
        select(
            Message.created_at,
            Message.sent_at,
            Message.channel,
            Message.recipient,
            Message.subject,
            Message.body_text,
            _T.transaction_ref,
            Message.step,
            Message.status,
        )
        .join(_T, _T.id == Message.transaction_id)
        .where(Message.organization_id == organization_id, Message.provider == Provider.OUTBOX)
        .order_by(Message.id.desc())
    )
    return Export("outbox", OUTBOX_HEADER, stmt, _outbox_cells)


# --- the stream -----------------------------------------------------------


def stream(session: DbSession, actor: Actor, export: Export) -> Iterator[str]:
    """The CSV text of `export`, chunk by chunk; once done (or cut off), an AuditEvent with the count.

    The header is yielded before the query is sent, so the download starts at
    once. The audit event says how many rows went out and whether the file was
    complete (a client that hangs up gets `complete: false`); it is committed
    here, the stream being the request's last act.
    """
    counter = {"rows": 0}
    complete = False

    def rows() -> Iterator[Sequence[object]]:
        result = session.execute(export.stmt.execution_options(yield_per=YIELD_PER))
        try:
            for row in result:
                counter["rows"] += 1
                yield export.cells(row)
        finally:
            result.close()

    try:
        yield from csv_chunks(export.header, rows())
        complete = True
    finally:
        # Nothing was written in this transaction: end it (and any failed read) before recording.
        session.rollback()
        audit.record(
            session,
            actor,
            f"export.{export.name}",
            target_type="export",
            target_id=export.name,
            filters=export.filters,
            rows=counter["rows"],
            complete=complete,
        )
        commit_now(session, "the stream runs after the request's commit: its audit entry is its own")
        log.info(
            "export_streamed",
            export=export.name,
            organization_id=actor.organization_id,
            rows=counter["rows"],
            complete=complete,
        )
