"""One off-session confirmation of a failed PaymentIntent with the card it failed with."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow


class RetryStatus:
    # Reserved and committed before Stripe is called: a crash leaves it pending, and
    # the same idempotency key makes the second call Stripe's first answer again.
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    # authentication_required: only the customer can pay now (the next message step).
    REQUIRES_ACTION = "requires_action"
    # Not tried: paid meanwhile, a network limit, do_not_contact, no reusable card.
    SKIPPED = "skipped"
    ERROR = "error"

    ALL = (PENDING, SUCCEEDED, DECLINED, REQUIRES_ACTION, SKIPPED, ERROR)
    # What counts against the card networks' retry limits: every call made.
    TRIED = (PENDING, SUCCEEDED, DECLINED, REQUIRES_ACTION, ERROR)


class CardRetry(Base):
    __tablename__ = "card_retry"
    __table_args__ = (
        # A campaign's retry step runs at most once.
        UniqueConstraint("attempt_id", "step", name="uq_card_retry_attempt_step"),
        # The network limits count retries per card over 24 hours and 30 days.
        Index("ix_card_retry_payment_method_created", "payment_method_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    transaction_id: Mapped[int] = mapped_column(ForeignKey("transaction.id"), index=True)
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("recovery_attempt.id"))
    step: Mapped[int | None] = mapped_column()
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    payment_method_id: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(24), default=RetryStatus.PENDING)
    decline_code: Mapped[str | None] = mapped_column(String(64))
    # Why it was skipped, or Stripe's message for a decline or an error.
    message: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"<CardRetry {self.id} {self.status} attempt={self.attempt_id} step={self.step}>"
