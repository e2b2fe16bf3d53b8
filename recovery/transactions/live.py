"""Live status for open pages: a cheap fingerprint of what a page shows, so polls answer 204 when unchanged.

The transaction page and the recoveries page poll every few seconds (htmx).
Rendering them costs a dozen queries; the fingerprint costs one round trip of
index-backed lookups. A poll whose fingerprint matches the page's own gets
204 No Content, which htmx leaves alone, so a form being filled in is not
replaced unless something really changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, select

from recovery.models import (
    AuditEvent,
    CheckoutSession,
    Message,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
)
from recovery.models.base import DbSession

# Seconds between polls; the page says so in its markup (hx-trigger).
POLL_SECONDS = 3
# Nothing more happens to these that an operator waits for: the page stops polling.
FINAL_STATUSES = frozenset({TransactionStatus.RECOVERED, TransactionStatus.REFUNDED})


def _digest(values: Iterable[Any]) -> str:
    return hashlib.blake2b(repr(tuple(values)).encode(), digest_size=8).hexdigest()


def transaction_fingerprint(session: DbSession, transaction_id: int) -> str:
    """A short hash that changes whenever anything the transaction page shows changes.

    The transaction's row, its attempts, messages and checkout sessions all bump
    `updated_at` on every change (onupdate); audit events are append-only, so
    their highest id is enough. Each subquery is served by an index on
    transaction_id (ix_audit_event_transaction_created, ix_message_transaction_created,
    ix_recovery_attempt_transaction_id, ix_checkout_session_transaction_created).
    """

    def latest(column: Any, owner: Any) -> Any:
        return select(func.max(column)).where(owner == transaction_id).scalar_subquery()

    row = session.execute(
        select(
            Transaction.status,
            Transaction.updated_at,
            latest(AuditEvent.id, AuditEvent.transaction_id),
            latest(RecoveryAttempt.updated_at, RecoveryAttempt.transaction_id),
            latest(Message.updated_at, Message.transaction_id),
            latest(CheckoutSession.updated_at, CheckoutSession.transaction_id),
        ).where(Transaction.id == transaction_id)
    ).one_or_none()
    return _digest(row or ())


def attempts_fingerprint(rows: Sequence[tuple[RecoveryAttempt, Transaction]]) -> str:
    """A short hash of the recoveries page's rows as shown (status, counts, times)."""
    return _digest(
        (a.id, a.status, a.messages_sent, a.next_send_at, a.clicked_at, a.completed_at, a.updated_at)
        for a, _ in rows
    )


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES
