"""The customer pays from their recovery link: the Checkout Session it opens, and whether they already paid.

The pay page and the send path ask the same question (`paid_session`,
`paid_at_stripe`), so a customer whom the page tells "paid, confirming" gets
no reminder that the payment is still open.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, exists, select

from recovery.audit import Actor
from recovery.models import (
    CardRetry,
    CheckoutSession,
    CheckoutStatus,
    RecoveryAttempt,
    RetryStatus,
    WebhookEvent,
)
from recovery.models.base import DbSession
from recovery.payments import checkout
from recovery.payments.gateway import StripeGateway
from recovery.payments.pages import PaymentPages
from recovery.payments.retry_guard import refuse_while_retrying
from recovery.payments.rules import PaymentRefused

# A session about to lapse is no use to a customer who is about to pay.
CHECKOUT_MARGIN = timedelta(minutes=5)


def paid_session(session: DbSession, transaction_id: int) -> CheckoutSession | None:
    """The transaction's Checkout Session the customer has completed, if any, newest first.

    Stripe's webhook may not have recovered the transaction yet (it is queued,
    or Stripe is slow to send it), but the success page already saw the session
    complete: the customer has paid, and must not be offered a second session.
    A completed session awaiting a delayed payment method counts too, until
    Stripe reports that payment failed: then the customer may pay again.
    """
    return session.scalar(
        select(CheckoutSession)
        .where(CheckoutSession.transaction_id == transaction_id, _is_paid_session())
        .order_by(CheckoutSession.id.desc())
        .limit(1)
    )


def paid_at_stripe(session: DbSession, transaction_ids: Sequence[int]) -> set[int]:
    """Which of the transactions have a `paid_session` or a card retry that charged: one query per batch."""
    if not transaction_ids:
        return set()
    ids = set(transaction_ids)
    # A card retry that succeeded has been paid too, its webhook on the way (payments/retries.py).
    charged = select(CardRetry.transaction_id).where(
        CardRetry.transaction_id.in_(ids), CardRetry.status == RetryStatus.SUCCEEDED
    )
    return set(
        session.scalars(
            select(CheckoutSession.transaction_id)
            .where(CheckoutSession.transaction_id.in_(ids), _is_paid_session())
            .union(charged)
        )
    )


def _is_paid_session() -> ColumnElement[bool]:
    """The condition of `paid_session`, shared so the send path and the pay page agree."""
    async_failed = exists().where(
        WebhookEvent.object_id == CheckoutSession.stripe_session_id,
        WebhookEvent.type == "checkout.session.async_payment_failed",
    )
    return (CheckoutSession.payment_status == "paid") | (
        (CheckoutSession.status == CheckoutStatus.COMPLETE) & ~async_failed
    )


def checkout_for_attempt(
    session: DbSession,
    gateway: StripeGateway,
    attempt: RecoveryAttempt,
    *,
    base_url: str,
    expires_in: timedelta,
    now: datetime,
) -> CheckoutSession:
    """The attempt's open Checkout Session, or a new one; raises PaymentRefused or StripeFailure.

    Safe to press twice: the n-th session of an attempt has the action key
    attempt:<id>:checkout:<n>, so a double submit gets the same session, and a
    new one is made only once the last has expired or is about to, and never
    once a session of the transaction is paid.
    """
    if paid_session(session, attempt.transaction_id) is not None:
        raise PaymentRefused("This payment has been received; it is being confirmed.", status=409)
    # Not even an open session while the saved card is being charged: the retry is expiring it.
    refuse_while_retrying(session, attempt.transaction, now)
    sessions = list(
        session.scalars(
            select(CheckoutSession)
            .where(CheckoutSession.attempt_id == attempt.id)
            .order_by(CheckoutSession.id)
        )
    )
    latest = sessions[-1] if sessions else None
    if (
        latest is not None
        and latest.status == CheckoutStatus.OPEN
        and latest.url
        and latest.expires_at > now + CHECKOUT_MARGIN
    ):
        return latest
    # A reservation Stripe has not answered yet is finished under its own key.
    index = (
        len(sessions) - 1 if latest is not None and latest.status == CheckoutStatus.PENDING else len(sessions)
    )
    life = max(checkout.CHECKOUT_MIN_LIFETIME, min(expires_in, attempt.expires_at - now))
    return checkout.create_checkout_session(
        session,
        gateway,
        attempt.transaction,
        Actor.system(attempt.organization_id, "customer"),
        checkout.CheckoutRequest(action=f"attempt:{attempt.id}:checkout:{index}", attempt_id=attempt.id),
        pages=PaymentPages(base_url, token=attempt.token),
        expires_in=life,
    )
