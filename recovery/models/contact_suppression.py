"""An email address or phone number that must not be messaged any more by one organization."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow


class SuppressionReason:
    # The provider refused the address for good (SMTP 5xx, Twilio 21211/21614).
    UNDELIVERABLE = "undeliverable"
    # The customer asked us to stop (Twilio 21610, STOP, unsubscribe).
    OPTED_OUT = "opted_out"


class ContactSuppression(Base):
    __tablename__ = "contact_suppression"
    __table_args__ = (
        UniqueConstraint("organization_id", "channel", "address", name="uq_contact_suppression_address"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    channel: Mapped[str] = mapped_column(String(8))
    # Lower-cased email or E.164 phone, as stored on transactions.
    address: Mapped[str] = mapped_column(String(254))
    reason: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(String(500))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("message.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
