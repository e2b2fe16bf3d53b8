"""A Stripe event as received, kept raw with its processing state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, HasStatus, UTCDateTime, utcnow


class WebhookState:
    PENDING = "pending"
    PROCESSED = "processed"
    FAILED = "failed"
    IGNORED = "ignored"
    UNMATCHED = "unmatched"

    ALL = (PENDING, PROCESSED, FAILED, IGNORED, UNMATCHED)


W = WebhookState

WEBHOOK_TRANSITIONS = {
    W.PENDING: frozenset({W.PROCESSED, W.FAILED, W.IGNORED, W.UNMATCHED}),
    W.FAILED: frozenset({W.PENDING, W.PROCESSED, W.IGNORED, W.UNMATCHED}),
    W.UNMATCHED: frozenset({W.PENDING}),  # "Process again" after the data arrived
    W.PROCESSED: frozenset(),
    W.IGNORED: frozenset(),
}


class WebhookEvent(HasStatus, Base):
    __tablename__ = "webhook_event"
    TRANSITIONS = WEBHOOK_TRANSITIONS
    __table_args__ = (
        Index("ix_webhook_event_org_received", "organization_id", "received_at"),
        Index("ix_webhook_event_status_received", "status", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stripe_event_id: Mapped[str] = mapped_column(String(255), unique=True)
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"))
    type: Mapped[str] = mapped_column(String(100), index=True)
    # data.object.id (cs_..., pi_..., ch_...): "which events touched this session?"
    object_id: Mapped[str | None] = mapped_column(String(255), index=True)
    api_version: Mapped[str | None] = mapped_column(String(32))
    livemode: Mapped[bool] = mapped_column(default=False)
    account: Mapped[str | None] = mapped_column(String(255))
    stripe_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=W.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_traceback: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
