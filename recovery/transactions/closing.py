"""Close a transaction (nothing more will be asked for it) and reopen it.

The state model is written down on `Transaction`: cancelling a recovery leaves
the transaction open; closing it is a separate, explicit act that stops
everything, until a reopen. Plain functions; the caller's boundary commits,
and the close's follow-ups (the cancelled send's job removed, the Payment Link
and open checkouts switched off) run after that commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rq import Retry

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import Transaction, TransactionStatus
from recovery.models.base import DbSession
from recovery.payments.jobs import queue_close_payment_options
from recovery.recoveries import lifecycle
from recovery.refusals import Refused
from recovery.transactions.validation import has_control_characters, strip_deceptive
from recovery.unit_of_work import on_commit

log = get_logger("recovery.transactions")

S = TransactionStatus
REASON_MAX = 500


# Switching off a Payment Link is a Stripe call that may fail for a while.
CLOSE_RETRY = (5, [10, 60, 300, 1800, 3600])


class ClosingRefused(Refused):
    """The transaction cannot be closed or reopened as asked (409), or the reason is not usable (422)."""

    status = 409


@dataclass(frozen=True)
class Closed:
    transaction: Transaction
    # The recovery the close cancelled, if one was running.
    cancelled: lifecycle.RecoveryCancelled | None


def clean_reason(raw: object) -> str | None:
    """The optional reason, trimmed; ClosingRefused (422) if it is not text or too long."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ClosingRefused("The reason must be text.", status=422, field="reason")
    if has_control_characters(raw):
        raise ClosingRefused(
            "The reason holds control characters; write it as plain text.", status=422, field="reason"
        )
    # Direction overrides and invisible characters would let a reason misread on the page.
    reason = " ".join(strip_deceptive(raw).split())
    if len(reason) > REASON_MAX:
        raise ClosingRefused(
            f"The reason is {len(reason)} characters long; keep it to {REASON_MAX}.",
            status=422,
            field="reason",
        )
    return reason or None


def close_transaction(
    session: DbSession, transaction: Transaction, actor: Actor, *, now: datetime, reason: object = None
) -> Closed:
    """Close an open transaction: cancel its running recovery, and offer nothing more.

    Raises ClosingRefused for a paid or already closed transaction. Once the
    close commits, the cancelled recovery's waiting send is removed and the
    transaction's Payment Link and open checkouts are switched off.
    """
    why = clean_reason(reason)
    if transaction.status == S.CANCELLED:
        raise ClosingRefused(f"Transaction {transaction.transaction_ref} is already closed.")
    if transaction.status not in S.OPEN:
        raise ClosingRefused(
            f"Transaction {transaction.transaction_ref} is {transaction.status_label}: "
            "there is nothing left to close."
        )
    cancelled = None
    running = lifecycle.active_attempt(session, transaction.id)
    if running is not None:
        cancelled = lifecycle.cancel_recovery(session, running, actor, now=now)
    transaction.transition(S.CANCELLED)
    transaction.closed_at = now
    transaction.closed_by = actor.label
    transaction.closed_reason = why
    audit.record(
        session,
        actor,
        "transaction.closed",
        at=now,
        transaction_id=transaction.id,
        target_type="transaction",
        target_id=transaction.transaction_ref,
        summary=f"nothing will be sent{f': {why}' if why else ''}",
        reason=why,
        recovery_cancelled=running.id if running is not None else None,
    )
    log.info(
        "transaction_closed",
        transaction_ref=transaction.transaction_ref,
        organization_id=transaction.organization_id,
        recovery_cancelled=running.id if running is not None else None,
    )
    if cancelled is None:
        # A cancelled recovery switches them off itself (recoveries.cancel_recovery).
        tries, intervals = CLOSE_RETRY
        on_commit(session, queue_close_payment_options, transaction.id, None, retry=Retry(tries, intervals))
    return Closed(transaction, cancelled)


def reopen_transaction(session: DbSession, transaction: Transaction, actor: Actor, *, now: datetime) -> None:
    """Take a closed transaction back to failed: open, with no recovery running."""
    if transaction.status != S.CANCELLED:
        raise ClosingRefused(
            f"Transaction {transaction.transaction_ref} is {transaction.status_label}, not closed: "
            "there is nothing to reopen."
        )
    transaction.transition(S.FAILED)
    closed_by, closed_at = transaction.closed_by, transaction.closed_at
    transaction.closed_at = transaction.closed_by = transaction.closed_reason = None
    audit.record(
        session,
        actor,
        "transaction.reopened",
        at=now,
        transaction_id=transaction.id,
        target_type="transaction",
        target_id=transaction.transaction_ref,
        summary="open again: a recovery or a payment can be started",
        closed_by=closed_by,
        closed_at=closed_at.isoformat() if closed_at else None,
    )
    log.info(
        "transaction_reopened",
        transaction_ref=transaction.transaction_ref,
        organization_id=transaction.organization_id,
        at=now.isoformat(),
    )
