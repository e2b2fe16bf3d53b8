"""A merchant: every other row belongs to exactly one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, false
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow


class Organization(Base):
    __tablename__ = "organization"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    brand_color: Mapped[str] = mapped_column(String(7), default="#1f6feb")
    # "Import failed payments from Stripe": a payment_intent.payment_failed that
    # names no known transaction becomes a new failed Transaction.
    import_stripe_failures: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The connected Stripe account (acct_...) whose events belong to this organization.
    stripe_account_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"<Organization {self.slug}>"
