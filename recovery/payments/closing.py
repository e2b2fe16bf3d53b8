"""Close a transaction's other ways to pay: once it is paid, closed, or its recovery cancelled.

The Payment Link is switched off and the other open Checkout Sessions
expired at Stripe, by a job queued after the commit that closed it
(`recovery.payments.jobs`); the reconciliation finds those whose job Redis lost.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Exists, select

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    CheckoutSession,
    CheckoutStatus,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
)
from recovery.models.base import DbSession
from recovery.payments import links
from recovery.payments.gateway import StripeFailure, StripeGateway
from recovery.payments.rules import CLOSED_STATUSES
from recovery.payments.stripe_objects import CheckoutSessionInfo

log = get_logger("recovery.webhooks")

# How far back the reconciliation looks for closed transactions still payable: their
# closing job is placed right after the commit that closed them, so only one lost with
# Redis (an outage, a flush) can leave them so, and that shows within minutes.
CLOSE_LOOKBACK = timedelta(days=3)


def close_payment_options(
    session: DbSession, gateway: StripeGateway, transaction_id: int, paid_session_id: str | None
) -> list[str]:
    """Deactivate the transaction's Payment Link and expire its other open sessions.

    For a transaction recovered (by a webhook or the reconciliation), or whose
    recovery staff cancelled: then nothing may be paid for it any more. One
    that is being recovered again by the time this runs is left alone.
    Safe to run twice: an inactive link is left alone, a session that is no
    longer open is only re-read. Runs after the commit that recovered or
    cancelled, so that a Stripe outage never holds either back.
    """
    txn = session.get(Transaction, transaction_id)
    # A cancelled recovery leaves the transaction open (failed), but what it offered the
    # customer goes with it; a transaction recovering again keeps what its new recovery offers.
    if txn is None or txn.status == TransactionStatus.RECOVERING:
        return []
    paid = txn.status in (TransactionStatus.RECOVERED, TransactionStatus.REFUNDED)
    if paid:
        actor, why = Actor.system(txn.organization_id, "Stripe webhook"), "the transaction is paid"
    elif txn.status == TransactionStatus.CANCELLED:
        actor, why = Actor.system(txn.organization_id, "Transaction closed"), "the transaction is closed"
    else:
        actor, why = Actor.system(txn.organization_id, "Recovery cancelled"), "its recovery was cancelled"
    done = _switch_off_link(session, gateway, txn, actor)
    done += _expire_other_sessions(session, gateway, txn, actor, why, paid_session_id)
    log.info("stripe_payment_options_closed", transaction_id=txn.id, closed=done)
    return done


def _switch_off_link(session: DbSession, gateway: StripeGateway, txn: Transaction, actor: Actor) -> list[str]:
    """Deactivate the transaction's Payment Link if Stripe still has it active; [its id] if so."""
    done: list[str] = []
    if txn.stripe_payment_link_id:
        if gateway.retrieve_payment_link(txn.stripe_payment_link_id).active:
            links.deactivate_payment_link(session, gateway, txn, actor)
            done.append(txn.stripe_payment_link_id)
        elif not link_switched_off_recorded(session, txn):
            # Off already (a one-payment link Stripe closed): said once, so that
            # `still_payable_after_closing` does not ask again.
            audit.record(
                session,
                actor,
                "stripe.payment_link_deactivated",
                transaction_id=txn.id,
                target_type="payment_link",
                target_id=txn.stripe_payment_link_id,
                payment_link_id=txn.stripe_payment_link_id,
                summary=f"Payment link {txn.stripe_payment_link_id} was already inactive at Stripe",
            )
    return done


def _expire_other_sessions(
    session: DbSession,
    gateway: StripeGateway,
    txn: Transaction,
    actor: Actor,
    why: str,
    paid_session_id: str | None,
) -> list[str]:
    """Expire the transaction's open Checkout Sessions but the paid one; the ids of those now expired."""
    done: list[str] = []
    records = session.scalars(
        select(CheckoutSession).where(
            CheckoutSession.transaction_id == txn.id,
            CheckoutSession.status == CheckoutStatus.OPEN,
            CheckoutSession.stripe_session_id.is_not(None),
        )
    ).all()
    for record in records:
        session_id = record.stripe_session_id
        if session_id is None or session_id == paid_session_id:
            continue
        try:
            info = gateway.expire_checkout_session(session_id)
        except StripeFailure as failure:
            if failure.retryable:
                raise
            info = gateway.retrieve_checkout_session(session_id)  # no longer open: see why
        follow_status(record, info)
        if record.status == CheckoutStatus.EXPIRED:
            audit.record(
                session,
                actor,
                "stripe.checkout_session_closed",
                transaction_id=txn.id,
                target_type="checkout_session",
                target_id=session_id,
                summary=f"Checkout session {session_id} expired: {why}",
            )
            done.append(session_id)
    return done


def follow_status(record: CheckoutSession, info: CheckoutSessionInfo) -> None:
    status = info.status or CheckoutStatus.OPEN
    if status in CheckoutStatus.ALL and record.can_transition(status):
        record.transition(status)
    record.payment_status = info.payment_status
    if info.payment_intent_id and not record.stripe_payment_intent_id:
        record.stripe_payment_intent_id = info.payment_intent_id


def link_switched_off_recorded(session: DbSession, txn: Transaction) -> bool:
    """Whether the transaction's current Payment Link was recorded as switched off."""
    return (
        session.scalar(
            select(AuditEvent.id)
            .where(
                AuditEvent.transaction_id == txn.id,
                AuditEvent.action == "stripe.payment_link_deactivated",
                AuditEvent.target_id == txn.stripe_payment_link_id,
            )
            .limit(1)
        )
        is not None
    )


def still_payable_after_closing(session: DbSession, now: datetime, limit: int = 200) -> list[int]:
    """Transactions that were closed to payment but still offer a way to pay.

    Recovered, refunded or closed ones, and open ones whose recovery staff
    cancelled (the transaction stays open, but what the recovery offered goes
    with it): an open Checkout Session of ours, or a Payment Link never
    switched off (no `stripe.payment_link_deactivated` for it).
    `close_payment_options` runs in a job queued after the commit that closed
    the transaction or cancelled the recovery; if Redis lost that job, the
    customer could still pay a closed debt or a recovery the merchant stopped.
    After a cancel only what was offered before it counts: a session or link
    made for the open transaction afterwards is the merchant's new offer.
    """
    closed = _closed_still_payable(session, now, limit)
    cancelled = _cancelled_still_payable(session, now, limit)
    return sorted({*closed, *cancelled})[:limit]


def _link_switched_off() -> Exists:
    """Whether the transaction's current Payment Link was recorded as switched off."""
    return (
        select(AuditEvent.id)
        .where(
            AuditEvent.transaction_id == Transaction.id,
            AuditEvent.action == "stripe.payment_link_deactivated",
            AuditEvent.target_id == Transaction.stripe_payment_link_id,
        )
        .exists()
    )


def _closed_still_payable(session: DbSession, now: datetime, limit: int) -> list[int]:
    """Recovered, refunded or closed transactions with an open session or a link never switched off."""
    link_switched_off = _link_switched_off()
    open_session = (
        select(CheckoutSession.id)
        .where(
            CheckoutSession.transaction_id == Transaction.id,
            CheckoutSession.status == CheckoutStatus.OPEN,
            CheckoutSession.stripe_session_id.is_not(None),
        )
        .exists()
    )
    return list(
        session.scalars(
            select(Transaction.id)
            .where(
                Transaction.status.in_(CLOSED_STATUSES),
                Transaction.updated_at >= now - CLOSE_LOOKBACK,
                open_session | (Transaction.stripe_payment_link_id.is_not(None) & ~link_switched_off),
            )
            .order_by(Transaction.id)
            .limit(limit)
        )
    )


def _cancelled_still_payable(session: DbSession, now: datetime, limit: int) -> list[int]:
    """Open transactions whose recovery staff cancelled, still offering what that recovery offered."""
    A = AttemptStatus
    link_switched_off = _link_switched_off()
    cancelled = (
        select(RecoveryAttempt.transaction_id, RecoveryAttempt.ended_at)
        .where(RecoveryAttempt.status == A.CANCELLED, RecoveryAttempt.ended_at >= now - CLOSE_LOOKBACK)
        .subquery()
    )
    running = (
        select(RecoveryAttempt.id)
        .where(RecoveryAttempt.transaction_id == Transaction.id, RecoveryAttempt.status.in_(A.ACTIVE))
        .exists()
    )
    session_before_cancel = (
        select(CheckoutSession.id)
        .where(
            CheckoutSession.transaction_id == Transaction.id,
            CheckoutSession.status == CheckoutStatus.OPEN,
            CheckoutSession.stripe_session_id.is_not(None),
            CheckoutSession.created_at <= cancelled.c.ended_at,
        )
        .exists()
    )
    link_before_cancel = (
        select(AuditEvent.id)
        .where(
            AuditEvent.transaction_id == Transaction.id,
            AuditEvent.action == "stripe.payment_link_created",
            AuditEvent.target_id == Transaction.stripe_payment_link_id,
            AuditEvent.created_at <= cancelled.c.ended_at,
        )
        .exists()
    )
    return list(
        session.scalars(
            select(Transaction.id)
            .join(cancelled, cancelled.c.transaction_id == Transaction.id)
            .where(
                Transaction.status == TransactionStatus.FAILED,
                ~running,
                session_before_cancel | (link_before_cancel & ~link_switched_off),
            )
            .distinct()
            .order_by(Transaction.id)
            .limit(limit)
        )
    )
