"""An email or SMS sent, or attempted, for a recovery attempt."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, HasStatus, UTCDateTime, utcnow


class MessageStatus:
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    UNDELIVERABLE = "undeliverable"
    CANCELLED = "cancelled"
    # The worker died while the provider had it: it may or may not have gone out.
    UNKNOWN = "unknown"

    ALL = (QUEUED, SENDING, SENT, DELIVERED, FAILED, UNDELIVERABLE, CANCELLED, UNKNOWN)


class Provider:
    SMTP = "smtp"
    TWILIO = "twilio"
    OUTBOX = "outbox"


M = MessageStatus

# Delivery reports (Twilio's words) after which the message will never arrive.
DELIVERY_FAILED = frozenset({"undelivered", "failed", "canceled"})

# Delivery reports arrive out of order; a status never moves backwards.
MESSAGE_TRANSITIONS = {
    M.QUEUED: frozenset({M.SENDING, M.SENT, M.FAILED, M.UNDELIVERABLE, M.CANCELLED}),
    M.SENDING: frozenset({M.SENT, M.DELIVERED, M.FAILED, M.UNDELIVERABLE, M.UNKNOWN}),
    M.SENT: frozenset({M.DELIVERED, M.FAILED, M.UNDELIVERABLE}),
    M.FAILED: frozenset({M.SENDING}),  # retried
    M.DELIVERED: frozenset(),
    M.UNDELIVERABLE: frozenset(),
    M.CANCELLED: frozenset(),
    # Found at the provider, reported on by it, or sent again by a staff member's choice.
    M.UNKNOWN: frozenset({M.SENT, M.DELIVERED, M.FAILED, M.UNDELIVERABLE, M.SENDING}),
}


class Message(HasStatus, Base):
    __tablename__ = "message"
    TRANSITIONS = MESSAGE_TRANSITIONS
    __table_args__ = (
        # One send per (attempt, step, channel): a job that runs twice sends once.
        UniqueConstraint("attempt_id", "step", "channel", name="uq_message_attempt_step_channel"),
        Index("ix_message_transaction_created", "transaction_id", "created_at"),
        # The sweeper's minutely scan for claims a stopped worker left (recoveries/repair.py):
        # only messages in flight, so it stays short however many were ever sent.
        Index(
            "ix_message_sending",
            "updated_at",
            postgresql_where=text("status = 'sending'"),
            sqlite_where=text("status = 'sending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("recovery_attempt.id"))
    transaction_id: Mapped[int] = mapped_column(ForeignKey("transaction.id"))
    step: Mapped[int] = mapped_column(default=0)
    channel: Mapped[str] = mapped_column(String(8))
    recipient: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str | None] = mapped_column(String(300))
    body_text: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=M.QUEUED)
    # Where it went: smtp, twilio, or outbox (the development outbox: nothing left the machine).
    provider: Mapped[str | None] = mapped_column(String(16))
    provider_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # Provider calls made for this message (transient failures are retried).
    tries: Mapped[int] = mapped_column(default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    # The provider's latest delivery report (Twilio: queued, sending, sent,
    # delivered, undelivered, failed); it only ever moves forward.
    delivery_status: Mapped[str | None] = mapped_column(String(16))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When the provider call began, committed before it: a claim without it never
    # reached a provider and is sent again; one with it and no answer is `unknown`.
    handed_off_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
