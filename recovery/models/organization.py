"""A merchant: every other row belongs to exactly one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, false
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow

DEFAULT_SCHEDULE = "0,1,3,6"
DEFAULT_LIFETIME_DAYS = 7
DEFAULT_FALLBACK_CHANNELS = "email,sms"
# No message between these local times of the customer (SPEC: 21:00 to 08:00).
DEFAULT_QUIET_HOURS = "21:00-08:00"


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
    # Recovery settings. The schedule is days after the start, comma-separated:
    # "0,1,3,6" sends at once, then after 1, 3 and 6 days (three resends).
    recovery_schedule: Mapped[str] = mapped_column(
        String(100), default=DEFAULT_SCHEDULE, server_default=DEFAULT_SCHEDULE
    )
    attempt_lifetime_days: Mapped[int] = mapped_column(
        default=DEFAULT_LIFETIME_DAYS, server_default=str(DEFAULT_LIFETIME_DAYS)
    )
    # How emails to customers are signed and where replies go (also the
    # contact shown on the customer pages); empty: the organization's name, no reply-to.
    email_from_name: Mapped[str | None] = mapped_column(String(100))
    reply_to_email: Mapped[str | None] = mapped_column(String(254))
    # Failure codes for which no recovery may be started, comma-separated.
    excluded_failure_codes: Mapped[str | None] = mapped_column(String(500))
    # Start a recovery by itself for each failed payment imported from Stripe.
    auto_start_recoveries: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Channels whose dead address may be replaced by the other channel, comma-separated
    # ("email": a refused email address falls back to SMS); each attempt can opt out.
    fallback_channels: Mapped[str] = mapped_column(
        String(20), default=DEFAULT_FALLBACK_CHANNELS, server_default=DEFAULT_FALLBACK_CHANNELS
    )
    # "HH:MM-HH:MM" in the customer's local time during which nothing is sent; empty: any hour.
    quiet_hours: Mapped[str] = mapped_column(
        String(11), default=DEFAULT_QUIET_HOURS, server_default=DEFAULT_QUIET_HOURS
    )
    # Where `notify_staff` steps write; empty: the organization's owners and admins.
    staff_alert_email: Mapped[str | None] = mapped_column(String(254))
    # The rule set's version: each change to the rules (a new rule, an edit, an order)
    # adds one, so that a write made from a stale page gets 409.
    rules_version: Mapped[int] = mapped_column(default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def excluded_codes(self) -> frozenset[str]:
        return frozenset(c.strip() for c in (self.excluded_failure_codes or "").split(",") if c.strip())

    @property
    def fallback_set(self) -> frozenset[str]:
        return frozenset(c.strip() for c in (self.fallback_channels or "").split(",") if c.strip())

    def __repr__(self) -> str:
        return f"<Organization {self.slug}>"
