"""The Stripe Customer we use for one email within one organization."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow


class StripeCustomer(Base):
    __tablename__ = "stripe_customer"
    __table_args__ = (UniqueConstraint("organization_id", "email", name="uq_stripe_customer_org_email"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    email: Mapped[str] = mapped_column(String(254))  # lower-cased, like Transaction.customer_email
    stripe_customer_id: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
