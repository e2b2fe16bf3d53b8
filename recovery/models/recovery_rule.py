"""One of an organization's ordered rules: conditions on a failure, and what to do when they all hold."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, false, true
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow


class RuleAction:
    START_CAMPAIGN = "start_campaign"
    DO_NOT_RECOVER = "do_not_recover"
    HOLD_FOR_REVIEW = "hold_for_review"

    ALL = (START_CAMPAIGN, DO_NOT_RECOVER, HOLD_FOR_REVIEW)


class RecoveryRule(Base):
    """The first enabled rule whose conditions all hold decides; the default (last) catches the rest."""

    __tablename__ = "recovery_rule"
    __table_args__ = (Index("ix_recovery_rule_org_position", "organization_id", "position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    # Order of evaluation, 0 first; the default rule is always last.
    position: Mapped[int] = mapped_column()
    name: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(default=True, server_default=true())
    # The catch-all: no conditions, cannot be deleted, disabled or moved.
    is_default: Mapped[bool] = mapped_column(default=False, server_default=false())
    # [{"type": "amount", "currency": "usd", "min": 1000, "max": None}, ...] (recovery/rules/conditions.py)
    conditions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    action: Mapped[str] = mapped_column(String(24), default=RuleAction.START_CAMPAIGN)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaign.id"))
    # Shown on the transaction when the action is do_not_recover or hold_for_review.
    reason: Mapped[str | None] = mapped_column(String(500))
    # Each edit adds one; writes name the version they read (If-Match) and get 409 otherwise.
    version: Mapped[int] = mapped_column(default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<RecoveryRule {self.id} #{self.position} {self.name!r} v{self.version}>"
