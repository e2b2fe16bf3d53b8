"""Who did what, when: every state-changing staff action and API call."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow


class AuditEvent(Base):
    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_org_created", "organization_id", "created_at"),
        Index("ix_audit_event_transaction_created", "transaction_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    actor_api_token_id: Mapped[int | None] = mapped_column(ForeignKey("api_token.id"))
    # What the timeline shows as "who": a user's email, an API token's name, "system".
    actor_label: Mapped[str] = mapped_column(String(254))
    action: Mapped[str] = mapped_column(String(64))
    transaction_id: Mapped[int | None] = mapped_column(ForeignKey("transaction.id"))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(255))  # Stripe ids run past 64
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ip_address: Mapped[str | None] = mapped_column(String(45))
    # The Stripe event that caused this entry, if one did (the event page lists them).
    webhook_event_id: Mapped[int | None] = mapped_column(ForeignKey("webhook_event.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
