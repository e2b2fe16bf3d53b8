"""Our record of one Stripe Checkout Session, reserved before Stripe is called."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from recovery.models.base import Base, BigId, HasStatus, UTCDateTime, utcnow

if TYPE_CHECKING:
    from recovery.models.transaction import Transaction


class CheckoutStatus:
    # Reserved: the idempotency key and parameters are saved, Stripe not yet answered.
    PENDING = "pending"
    OPEN = "open"
    COMPLETE = "complete"
    EXPIRED = "expired"
    # Stripe refused the create; the reservation is closed and never retried.
    FAILED = "failed"

    ALL = (PENDING, OPEN, COMPLETE, EXPIRED, FAILED)


C = CheckoutStatus

# Stripe's own session lifecycle, plus our reservation in front of it. A session
# paid after we saw it expire still counts (webhooks arrive in any order).
CHECKOUT_TRANSITIONS = {
    C.PENDING: frozenset({C.OPEN, C.COMPLETE, C.EXPIRED, C.FAILED}),
    C.OPEN: frozenset({C.COMPLETE, C.EXPIRED}),
    C.EXPIRED: frozenset({C.COMPLETE}),
    C.COMPLETE: frozenset(),
    C.FAILED: frozenset(),
}


class CheckoutSession(HasStatus, Base):
    __tablename__ = "checkout_session"
    TRANSITIONS = CHECKOUT_TRANSITIONS
    __table_args__ = (
        # The same logical action always maps to the same reservation, hence one
        # Stripe session: this constraint is what makes a double submit harmless.
        UniqueConstraint("organization_id", "idempotency_key", name="uq_checkout_session_org_key"),
        Index("ix_checkout_session_transaction_created", "transaction_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    transaction_id: Mapped[int] = mapped_column(ForeignKey("transaction.id"))
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("recovery_attempt.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    # A digest of what was asked (email, metadata): a retry without a key of its
    # own is recognised by it and gets the same session instead of a second one.
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    stripe_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    url: Mapped[str | None] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), default=C.PENDING)
    payment_status: Mapped[str | None] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    customer_email: Mapped[str | None] = mapped_column(String(254))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(String(500))
    # Stripe's refusal as first answered (kind and HTTP status), so that a repeat of
    # the same request is answered the same, as Stripe replays a key's first answer.
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    transaction: Mapped[Transaction] = relationship()

    @property
    def is_open(self) -> bool:
        return self.status == C.OPEN

    @property
    def stripe_idempotency_key(self) -> str:
        """The key Stripe sees: ours plus the expiry asked for.

        A retry of this reservation sends the same and gets Stripe's first
        answer; a reservation renewed with a later expiry is a new request.
        """
        return f"{self.idempotency_key}-exp{int(self.expires_at.timestamp())}"

    def __repr__(self) -> str:
        return f"<CheckoutSession {self.stripe_session_id or self.idempotency_key} {self.status}>"
