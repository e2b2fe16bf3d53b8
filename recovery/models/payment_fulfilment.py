"""The one record that a transaction's payment was received: the fulfilment lock.

A payment reaches us several ways (checkout.session.completed,
payment_intent.succeeded, async_payment_succeeded, reconciliation), each
possibly delivered twice and processed concurrently. Whoever inserts this row
first fulfils; the unique constraints make every other try a no-op, without a
check-then-insert race.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow


class PaymentFulfilment(Base):
    __tablename__ = "payment_fulfilment"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    # One recovery per transaction: a second payment is a duplicate to refund, not a second recovery.
    transaction_id: Mapped[int] = mapped_column(ForeignKey("transaction.id"), unique=True)
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("recovery_attempt.id"))
    # Two events for one session fulfil it once.
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # What proved the payment: a webhook event type, or "reconciliation".
    source: Mapped[str] = mapped_column(String(64))
    # Indexed: a job that runs again for an applied event reads its follow-ups back by it.
    webhook_event_id: Mapped[int | None] = mapped_column(ForeignKey("webhook_event.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
