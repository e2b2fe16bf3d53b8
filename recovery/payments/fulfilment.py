"""The domain step "a transaction was paid": recover it once, finish its recovery, stop its messages.

Stripe tells us a payment happened in several ways (a Checkout Session
completed, a PaymentIntent succeeded, a charge refunded before its payment's
own events arrived, the reconciliation re-reading a session); each is parsed
and matched to a transaction by the webhook handlers, then comes here.
Nothing here commits: the caller's unit of work does, and then the closing
of the transaction's other ways to pay is queued (an on_commit follow-up).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from recovery import audit, money
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    CheckoutSession,
    CheckoutStatus,
    Message,
    MessageStatus,
    PaymentFulfilment,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
)
from recovery.models.base import DbSession
from recovery.payments.jobs import queue_close_after_payment
from recovery.unit_of_work import on_commit

log = get_logger("recovery.webhooks")


class EventContradicts(Exception):
    """What Stripe says contradicts our records (e.g. another organization's object): never applied.

    Not a refusal answered to a person: the event is kept as unmatched, with this as its reason.
    """


@dataclass(frozen=True)
class Payment:
    """Proof that money arrived for a transaction."""

    amount: int
    currency: str
    session_id: str | None
    payment_intent_id: str | None
    source: str


@dataclass(frozen=True)
class Witness:
    """Who told us, and when it happened at Stripe: what every timeline entry of the step carries."""

    label: str
    occurred_at: datetime
    webhook_event_id: int | None = None
    stripe_event_id: str | None = None

    def note(
        self, session: DbSession, transaction: Transaction, action: str, summary: str, **details: object
    ) -> AuditEvent:
        """Add a timeline entry for the transaction, linked to the event that caused it."""
        return audit.record(
            session,
            Actor.system(transaction.organization_id, self.label),
            action,
            transaction_id=transaction.id,
            target_type="transaction",
            target_id=transaction.transaction_ref,
            webhook_event_id=self.webhook_event_id,
            # When it happened at Stripe: a delivery retried for hours still lands where it belongs.
            at=self.occurred_at,
            summary=summary,
            stripe_event_id=self.stripe_event_id,
            **details,
        )


def format_amount(value: int, currency: str) -> str:
    try:
        return money.format_amount(value, currency)
    except Exception:  # an unknown currency must not fail the event
        return f"{value} {currency}"


class Unread(Enum):
    """The caller has not looked the session's record up (it has, when it passes the record or None)."""

    RECORD = "unread"


def checkout_record(session: DbSession, session_id: str | None) -> CheckoutSession | None:
    if not session_id:
        return None
    return session.scalar(select(CheckoutSession).where(CheckoutSession.stripe_session_id == session_id))


def fulfil(
    session: DbSession,
    witness: Witness,
    txn: Transaction,
    payment: Payment,
    attempt_id: int | None,
    *,
    record: CheckoutSession | Unread | None = Unread.RECORD,
) -> bool:
    """Recover the transaction once; return False if it was already fulfilled.

    Safe to run twice or concurrently: the PaymentFulfilment insert (unique per
    transaction and per session) decides; the loser changes nothing, and on
    PostgreSQL waits for the winner's commit before learning it lost.
    `record`: our record of the paid session, when the caller has read it already.
    """
    if record is Unread.RECORD:
        record = checkout_record(session, payment.session_id)
    attempt_id = attempt_id or (record.attempt_id if record else None)
    row = PaymentFulfilment(
        organization_id=txn.organization_id,
        transaction_id=txn.id,
        attempt_id=attempt_id,
        stripe_checkout_session_id=payment.session_id,
        stripe_payment_intent_id=payment.payment_intent_id,
        amount=payment.amount,
        currency=payment.currency,
        source=payment.source,
        webhook_event_id=witness.webhook_event_id,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        _already_fulfilled(session, witness, txn, payment, record)
        return False
    at = witness.occurred_at
    if txn.can_transition(TransactionStatus.RECOVERED):
        txn.transition(TransactionStatus.RECOVERED)
    txn.recovered_at = at
    txn.recovered_amount = payment.amount
    if payment.payment_intent_id and not txn.stripe_payment_intent_id:
        txn.stripe_payment_intent_id = payment.payment_intent_id
    if record is not None and record.can_transition(CheckoutStatus.COMPLETE):
        record.transition(CheckoutStatus.COMPLETE)
        record.completed_at = at
    finish_attempts(session, txn, attempt_id, at)
    cancelled = cancel_pending_messages(session, txn)
    _note_recovered(session, witness, txn, payment, cancelled)
    on_commit(session, queue_close_after_payment, txn.id, payment.session_id)
    return True


def _note_recovered(
    session: DbSession, witness: Witness, txn: Transaction, payment: Payment, cancelled: int
) -> None:
    via = ", ".join(filter(None, [payment.session_id, payment.payment_intent_id]))
    witness.note(
        session,
        txn,
        "stripe.payment_recovered",
        f"{format_amount(payment.amount, payment.currency)} paid ({via})",
        amount=payment.amount,
        currency=payment.currency,
        payment_intent_id=payment.payment_intent_id,
        checkout_session_id=payment.session_id,
        messages_cancelled=cancelled,
    )
    if (payment.amount, payment.currency) != (txn.amount, txn.currency):
        # Money arrived, so the transaction is recovered, but not what was owed: staff must see it.
        witness.note(
            session,
            txn,
            "stripe.payment_amount_differs",
            f"Paid {format_amount(payment.amount, payment.currency)}, "
            f"owed {format_amount(txn.amount, txn.currency)}",
            amount=payment.amount,
            currency=payment.currency,
            owed_amount=txn.amount,
            owed_currency=txn.currency,
        )
        log.warning(
            "stripe_payment_amount_differs",
            transaction_id=txn.id,
            paid=payment.amount,
            paid_currency=payment.currency,
            owed=txn.amount,
            owed_currency=txn.currency,
        )
    log.info(
        "transaction_recovered",
        transaction_ref=txn.transaction_ref,
        transaction_id=txn.id,
        organization_id=txn.organization_id,
        amount=payment.amount,
        currency=payment.currency,
        session_id=payment.session_id,
        payment_intent_id=payment.payment_intent_id,
        source=payment.source,
    )


def _already_fulfilled(
    session: DbSession, witness: Witness, txn: Transaction, payment: Payment, record: CheckoutSession | None
) -> None:
    existing = session.scalar(select(PaymentFulfilment).where(PaymentFulfilment.transaction_id == txn.id))
    if existing is None:
        # The session id is fulfilled for another transaction: our records disagree.
        raise EventContradicts(f"session {payment.session_id} is already fulfilled for another transaction")
    same = (payment.payment_intent_id and payment.payment_intent_id == existing.stripe_payment_intent_id) or (
        payment.session_id and payment.session_id == existing.stripe_checkout_session_id
    )
    if same:
        # The other proof of the same payment: fill in what the first one lacked.
        if payment.session_id and not existing.stripe_checkout_session_id:
            existing.stripe_checkout_session_id = payment.session_id
        if payment.payment_intent_id and not existing.stripe_payment_intent_id:
            existing.stripe_payment_intent_id = payment.payment_intent_id
        if record is not None and record.can_transition(CheckoutStatus.COMPLETE):
            record.transition(CheckoutStatus.COMPLETE)
            record.completed_at = witness.occurred_at
        return
    if existing.stripe_payment_intent_id and payment.payment_intent_id is None:
        return  # a proof that names no PaymentIntent cannot tell; assume the same payment
    witness.note(
        session,
        txn,
        "stripe.duplicate_payment",
        f"Paid again: {format_amount(payment.amount, payment.currency)} "
        f"({payment.session_id or payment.payment_intent_id}); consider a refund",
        amount=payment.amount,
        currency=payment.currency,
        payment_intent_id=payment.payment_intent_id,
        checkout_session_id=payment.session_id,
    )
    log.warning(
        "stripe_duplicate_payment",
        transaction_id=txn.id,
        organization_id=txn.organization_id,
        payment_intent_id=payment.payment_intent_id,
        session_id=payment.session_id,
        first_payment_intent_id=existing.stripe_payment_intent_id,
    )


def finish_attempts(session: DbSession, txn: Transaction, attempt_id: int | None, at: datetime) -> None:
    """Complete the paying recovery attempt and cancel the transaction's other active ones."""
    attempts = session.scalars(select(RecoveryAttempt).where(RecoveryAttempt.transaction_id == txn.id)).all()
    for attempt in attempts:
        paying = attempt.id == attempt_id or (attempt_id is None and attempt.is_active)
        if paying and attempt.can_transition(AttemptStatus.COMPLETED):
            attempt.transition(AttemptStatus.COMPLETED)
            attempt.completed_at = attempt.ended_at = at
            attempt.next_send_at = None
        elif attempt.is_active:
            attempt.transition(AttemptStatus.CANCELLED)
            attempt.ended_at = at
            attempt.next_send_at = None


def cancel_pending_messages(session: DbSession, txn: Transaction) -> int:
    """Cancel the transaction's messages not yet sent; return how many."""
    messages = session.scalars(
        select(Message).where(Message.transaction_id == txn.id, Message.status == MessageStatus.QUEUED)
    ).all()
    for message in messages:
        message.transition(MessageStatus.CANCELLED)
    return len(messages)
