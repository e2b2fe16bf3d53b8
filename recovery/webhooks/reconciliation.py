"""The reconciliation: re-read our open Checkout Sessions from Stripe and apply the paid ones.

For a payment whose webhook never arrived (or was never processed): the paid
session goes through the same handler as its event would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from recovery.logs import get_logger
from recovery.models import (
    AttemptStatus,
    CheckoutSession,
    CheckoutStatus,
    RecoveryAttempt,
    Transaction,
    utcnow,
)
from recovery.models.base import DbSession
from recovery.payments.closing import follow_status
from recovery.payments.fulfilment import EventContradicts
from recovery.payments.gateway import StripeGateway
from recovery.payments.rules import CLOSED_STATUSES
from recovery.webhooks.context import RECONCILIATION_LABEL, Context
from recovery.webhooks.handlers import session_object, session_paid

log = get_logger("recovery.webhooks")


@dataclass
class Reconciled:
    checked: int = 0
    recovered: int = 0
    expired: int = 0
    errors: int = 0


def sessions_to_reconcile(
    session: DbSession, older_than: timedelta, organization_id: int | None = None, limit: int = 500
) -> list[int]:
    """Our open Checkout Sessions older than `older_than` whose transaction is still collectable.

    Those of active attempts, and those made from the dashboard or the API
    (no attempt): a payment whose webhook was lost is recovered either way.
    """
    cutoff = utcnow() - older_than
    statement = (
        select(CheckoutSession.id)
        .join(Transaction, Transaction.id == CheckoutSession.transaction_id)
        .outerjoin(RecoveryAttempt, RecoveryAttempt.id == CheckoutSession.attempt_id)
        .where(
            CheckoutSession.status == CheckoutStatus.OPEN,
            CheckoutSession.stripe_session_id.is_not(None),
            CheckoutSession.created_at < cutoff,
            Transaction.status.not_in(CLOSED_STATUSES),
            (CheckoutSession.attempt_id.is_(None)) | (RecoveryAttempt.status.in_(AttemptStatus.ACTIVE)),
        )
        .order_by(CheckoutSession.created_at)
        .limit(limit)
    )
    if organization_id is not None:
        statement = statement.where(CheckoutSession.organization_id == organization_id)
    return list(session.scalars(statement))


def reconcile_session(session: DbSession, gateway: StripeGateway, record_id: int, result: Reconciled) -> None:
    """Re-read one session from Stripe and apply it through the webhook handler; the caller commits."""
    record = session.get(CheckoutSession, record_id, with_for_update=True)
    if record is None or record.status != CheckoutStatus.OPEN or record.stripe_session_id is None:
        return
    info = gateway.retrieve_checkout_session(record.stripe_session_id)
    result.checked += 1
    if info.status == "complete" and info.payment_status in ("paid", "no_payment_required"):
        ctx = Context(session, None, lambda: gateway, label=RECONCILIATION_LABEL)
        try:
            session_paid(ctx, session_object(info))
        except EventContradicts as refusal:
            log.warning("stripe_reconcile_refused", session_id=info.id, reason=str(refusal))
            return
        if ctx.recovered_transaction_id is not None:
            # Its other ways to pay are closed after the commit (the fulfilment's follow-up).
            result.recovered += 1
            log.warning(
                "stripe_payment_reconciled",
                session_id=info.id,
                transaction_id=ctx.recovered_transaction_id,
                hint="its webhook never arrived or was not processed",
            )
    else:
        follow_status(record, info)
        if record.status == CheckoutStatus.EXPIRED:
            result.expired += 1
