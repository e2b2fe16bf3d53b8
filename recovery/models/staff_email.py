"""An email to a staff member (password reset, invitation): not a customer recovery message."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow


class StaffEmailKind:
    PASSWORD_RESET = "password_reset"
    INVITATION = "invitation"


class StaffEmailStatus:
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"


class StaffEmail(Base):
    """One staff email and how its sending went.

    Its body holds a link that opens an account, so it is kept only while the
    email goes to the development outbox (which has to show it); an email sent
    over SMTP keeps its subject and outcome, and its body is blanked once sent.
    """

    __tablename__ = "staff_email"
    __table_args__ = (Index("ix_staff_email_org_created", "organization_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    # The staff member it was sent to; None once a revoked invitation's user is gone.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(300))
    body_text: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=StaffEmailStatus.QUEUED)
    # smtp or outbox (the development outbox: nothing left the machine).
    provider: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
