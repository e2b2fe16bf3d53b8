"""One charge at a time per transaction: a card retry and the customer's own payment take turns.

Both sides take the transaction's row lock (`FOR UPDATE`) before they commit
their reservation: a card retry its `CardRetry` row (`retries.py`), the pay
page and every other maker of a Checkout Session its `CheckoutSession` row
(`checkout.py`). Whoever commits first wins, and the other sees it:

- the pay page refuses while a retry is in flight (`refuse_while_retrying`);
- a retry is skipped while a customer's session is being made
  (`customer_payment_in_flight`), and expires the open ones at Stripe before it
  charges; a session that cannot be expired because it completed means the
  customer paid, and the card is not charged.

Payment Links are not closed by a retry (they are the merchant's, and may be
shared): a transaction with an active link is not retried (`retries.py`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from recovery.models import CardRetry, CheckoutSession, CheckoutStatus, Transaction, utcnow
from recovery.models.base import DbSession
from recovery.models.card_retry import RetryStatus
from recovery.payments.rules import PaymentRefused

# How long a reserved retry holds the pay page: the call and RQ's retries of a
# transient failure (30 s, 2 min, 10 min) fit well inside. A retry whose job
# died is forgotten after it, so a customer is never locked out for good.
RETRY_IN_FLIGHT = timedelta(minutes=30)
# A session reservation Stripe has not answered yet is a customer about to pay;
# older than this it is a request that died (the send path's own repair horizon).
CUSTOMER_PAYMENT_IN_FLIGHT = timedelta(minutes=10)

RETRYING_MESSAGE = (
    "We are trying your saved card for this payment right now. Please try again in a minute: "
    "if it goes through, there is nothing left to pay."
)

PAID_BY_RETRY_MESSAGE = "This payment has been received from your saved card; it is being confirmed."


def lock_transaction(session: DbSession, transaction_id: int) -> Transaction | None:
    """The transaction, read afresh under its row lock (PostgreSQL; SQLite serialises writers anyway)."""
    return session.scalar(
        select(Transaction)
        .where(Transaction.id == transaction_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def retry_in_flight(session: DbSession, transaction_id: int, now: datetime) -> CardRetry | None:
    """A card retry of the transaction reserved and not finished (pending, or waiting to be tried again)."""
    return session.scalar(
        select(CardRetry)
        .where(
            CardRetry.transaction_id == transaction_id,
            CardRetry.status.in_((RetryStatus.PENDING, RetryStatus.ERROR)),
            CardRetry.finished_at.is_(None),
            CardRetry.created_at > now - RETRY_IN_FLIGHT,
        )
        .limit(1)
    )


def charged_by_retry(session: DbSession, transaction_id: int) -> bool:
    """Whether a card retry charged the transaction: paid, though the webhook may not have said so yet."""
    return (
        session.scalar(
            select(CardRetry.id)
            .where(CardRetry.transaction_id == transaction_id, CardRetry.status == RetryStatus.SUCCEEDED)
            .limit(1)
        )
        is not None
    )


def refuse_while_retrying(session: DbSession, transaction: Transaction, now: datetime | None = None) -> None:
    """Lock the transaction; refuse (409) a new way to pay while its card is retried, or once it was charged.

    Called before a Checkout Session is reserved; the lock is held until that
    reservation commits, so a retry deciding at the same moment waits and sees it.
    A retry that succeeded has been paid: Stripe's webhook recovers the
    transaction moments later, and until then nobody may pay it again.
    """
    lock_transaction(session, transaction.id)
    if charged_by_retry(session, transaction.id):
        raise PaymentRefused(PAID_BY_RETRY_MESSAGE, status=409)
    if retry_in_flight(session, transaction.id, now or utcnow()) is not None:
        raise PaymentRefused(RETRYING_MESSAGE, status=409)


def customer_payment_in_flight(session: DbSession, transaction_id: int, now: datetime) -> bool:
    """Whether a Checkout Session of the transaction is being made right now (reserved, not yet answered)."""
    return (
        session.scalar(
            select(CheckoutSession.id)
            .where(
                CheckoutSession.transaction_id == transaction_id,
                CheckoutSession.status == CheckoutStatus.PENDING,
                CheckoutSession.created_at > now - CUSTOMER_PAYMENT_IN_FLIGHT,
            )
            .limit(1)
        )
        is not None
    )
