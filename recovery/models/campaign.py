"""A merchant's named plan for a recovery: steps of messages, card retries and staff alerts, in versions.

Editing a campaign adds a version; the rows of a version never change, so a
running attempt (which points at its version) keeps doing what it started with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from recovery.models.base import Base, BigId, UTCDateTime, utcnow


class CampaignEnd:
    # Today's end: the link works until it expires, then the attempt is exhausted.
    EXHAUSTED = "exhausted"
    # Staff look at the transaction once the steps are done (the review queue).
    HOLD_FOR_REVIEW = "hold_for_review"

    ALL = (EXHAUSTED, HOLD_FOR_REVIEW)


class StepAction:
    EMAIL = "email"
    SMS = "sms"
    EMAIL_AND_SMS = "email_and_sms"
    RETRY_CARD = "retry_card"
    NOTIFY_STAFF = "notify_staff"

    MESSAGES = (EMAIL, SMS, EMAIL_AND_SMS)
    ALL = (*MESSAGES, RETRY_CARD, NOTIFY_STAFF)


class Campaign(Base):
    __tablename__ = "campaign"
    __table_args__ = (
        # The built-in campaigns (recovery/campaigns/builtin.py), one of each per organization.
        UniqueConstraint("organization_id", "builtin", name="uq_campaign_org_builtin"),
        Index("ix_campaign_org_name", "organization_id", "name"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    name: Mapped[str] = mapped_column(String(200))
    # Which built-in campaign this is ("default", "soft_decline", "customer_action",
    # "do_not_contact"); None for the merchant's own.
    builtin: Mapped[str | None] = mapped_column(String(32))
    # The version a new attempt starts with; each edit adds one.
    current_version: Mapped[int] = mapped_column(default=1, server_default="1")
    # A campaign in use cannot be deleted; archived, no rule or start may choose it.
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    versions: Mapped[list[CampaignVersion]] = relationship(
        back_populates="campaign", order_by="CampaignVersion.version"
    )

    def __repr__(self) -> str:
        return f"<Campaign {self.id} {self.name!r} v{self.current_version}>"


class CampaignVersion(Base):
    __tablename__ = "campaign_version"
    __table_args__ = (UniqueConstraint("campaign_id", "version", name="uq_campaign_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id"))
    version: Mapped[int] = mapped_column()
    # [{"action": StepAction, "delay_hours": int, "after": "failure" | "previous"}, ...]:
    # each step's delay counts from the failure, or from the step before it (the
    # first step's "previous" is the start of the recovery).
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    end: Mapped[str] = mapped_column(String(24), default=CampaignEnd.EXHAUSTED)
    # How long the customer's pay link works after the start.
    link_lifetime_days: Mapped[int] = mapped_column(default=7)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The actor's label as the audit log has it.
    created_by: Mapped[str | None] = mapped_column(String(200))

    campaign: Mapped[Campaign] = relationship(back_populates="versions")

    def __repr__(self) -> str:
        return f"<CampaignVersion {self.campaign_id} v{self.version}>"
