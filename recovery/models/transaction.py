"""A failed payment that we try to recover."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from recovery.declines import category
from recovery.models.base import Base, BigId, HasStatus, UTCDateTime, utcnow


class TransactionStatus:
    """Where the money stands; see `Transaction` for what each one offers."""

    FAILED = "failed"
    RECOVERING = "recovering"
    RECOVERED = "recovered"
    UNRECOVERED = "unrecovered"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"

    ALL = (FAILED, RECOVERING, RECOVERED, UNRECOVERED, CANCELLED, REFUNDED)
    # Open: staff may still start a recovery or ask for a payment.
    OPEN = (FAILED, RECOVERING, UNRECOVERED)


S = TransactionStatus

# Money only moves forward: once recovered, only a refund changes it. A late
# payment after staff gave up (closed, unrecovered) still counts. Cancelling a
# recovery takes a recovering transaction back to failed (open again); only an
# explicit close makes it `cancelled`, and only a reopen leaves that (to failed).
# Closing a recovering transaction cancels its recovery first, so there is no
# recovering -> cancelled edge: a closed transaction never has a recovery running.
TRANSACTION_TRANSITIONS = {
    S.FAILED: frozenset({S.RECOVERING, S.RECOVERED, S.UNRECOVERED, S.CANCELLED}),
    S.RECOVERING: frozenset({S.FAILED, S.RECOVERED, S.UNRECOVERED}),
    S.UNRECOVERED: frozenset({S.RECOVERING, S.RECOVERED, S.CANCELLED}),
    S.CANCELLED: frozenset({S.FAILED, S.RECOVERED}),
    S.RECOVERED: frozenset({S.REFUNDED}),
    S.REFUNDED: frozenset(),
}

# The word staff read for each status, the same on the list, the page, the timeline
# and in the API docs. `cancelled` keeps its API value (clients rely on it) but reads
# "closed": it is the transaction that was closed, not a recovery that was cancelled.
STATUS_LABELS = {
    S.FAILED: "failed",
    S.RECOVERING: "recovering",
    S.RECOVERED: "recovered",
    S.UNRECOVERED: "unrecovered",
    S.CANCELLED: "closed",
    S.REFUNDED: "refunded",
}


class TransactionSource:
    FORM = "form"
    CSV = "csv"
    API = "api"
    STRIPE = "stripe"
    DEMO = "demo"


class Transaction(HasStatus, Base):
    """A failed payment, and where its collection stands.

    One state model, so that a page never says two things at once:

    - Cancelling a *recovery* ends that attempt only (its link stops working,
      nothing more is sent). A recovering transaction goes back to `failed`: it
      stays open, and staff may start a new recovery or ask for a payment.
    - Closing the *transaction* (status `cancelled`, shown as "closed") says
      nothing more will be asked for it: a running recovery is cancelled, the
      Payment Link and open checkouts are switched off, and no recovery,
      checkout or payment link can be started (page, bulk start or API: 409)
      until someone reopens it, which takes it back to `failed`. `closed_at`,
      `closed_by` and `closed_reason` say who closed it, when and why. A
      payment that still arrives for a closed transaction recovers it.
    """

    __tablename__ = "transaction"
    TRANSITIONS = TRANSACTION_TRANSITIONS
    __table_args__ = (
        UniqueConstraint("organization_id", "transaction_ref", name="uq_transaction_org_ref"),
        # Keyset pagination: every list order ends in id so the cursor is total.
        Index("ix_transaction_org_failed", "organization_id", "failed_at", "id"),
        Index("ix_transaction_org_status_failed", "organization_id", "status", "failed_at", "id"),
        # Amounts sort only within one currency (¥5,000 is not more than $49).
        Index("ix_transaction_org_currency_amount", "organization_id", "currency", "amount", "id"),
        Index("ix_transaction_org_email", "organization_id", "customer_email"),
        Index("ix_transaction_org_phone", "organization_id", "customer_phone"),
        Index("ix_transaction_org_currency_failed", "organization_id", "currency", "failed_at"),
        Index(
            "ix_transaction_org_review",
            "organization_id",
            "held_at",
            postgresql_where=text("review_status = 'held'"),
            sqlite_where=text("review_status = 'held'"),
        ),
        # Search: a case-insensitive prefix of a reference or an email, as a range over
        # lower(column) compared byte by byte (transactions.search). PostgreSQL's pattern
        # operator class orders by bytes whatever the database's collation; SQLite does anyway.
        *(
            Index(
                f"ix_transaction_org_{name}_search",
                "organization_id",
                func.lower(text(column)).label(f"{name}_key"),
                postgresql_ops={f"{name}_key": "text_pattern_ops"},
            )
            for name, column in (("ref", "transaction_ref"), ("email", "customer_email"))
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    transaction_ref: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default=S.FAILED)
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    customer_name: Mapped[str | None] = mapped_column(String(200))
    # Stored lower-cased so that search by email is an exact index lookup.
    customer_email: Mapped[str | None] = mapped_column(String(254))
    customer_phone: Mapped[str | None] = mapped_column(String(16))  # E.164
    customer_country: Mapped[str | None] = mapped_column(String(2))  # ISO 3166-1 alpha-2
    customer_locale: Mapped[str | None] = mapped_column(String(35))  # BCP 47, e.g. en-US
    # `metadata` is reserved on declarative classes; the column keeps the SPEC name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    source: Mapped[str] = mapped_column(String(16), default=TransactionSource.FORM)
    import_id: Mapped[int | None] = mapped_column(ForeignKey("csv_import.id"))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # The reusable card the payment failed with (pm_...): what a campaign's card retry confirms with.
    stripe_payment_method_id: Mapped[str | None] = mapped_column(String(255))
    payment_link_url: Mapped[str | None] = mapped_column(String(2048))
    stripe_payment_link_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # One Product and Price per transaction, reused by every Payment Link for it.
    stripe_product_id: Mapped[str | None] = mapped_column(String(255))
    stripe_price_id: Mapped[str | None] = mapped_column(String(255))
    # The latest Checkout Session's link and expiry, as shown on the dashboard.
    checkout_url: Mapped[str | None] = mapped_column(String(2048))
    checkout_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    recovered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # What Stripe says was paid, in `currency`'s minor unit (normally == amount).
    recovered_amount: Mapped[int | None] = mapped_column(BigInteger)
    # Set while closed (status cancelled); a reopen clears them. `closed_by` is the
    # actor's label as the audit log has it, so it reads the same after a user is gone.
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    closed_by: Mapped[str | None] = mapped_column(String(200))
    closed_reason: Mapped[str | None] = mapped_column(String(500))

    # The review queue: "held" by a rule or a campaign's end, until staff approve
    # (start a campaign) or dismiss it; `review_reason` says why it was held.
    review_status: Mapped[str | None] = mapped_column(String(16))
    review_reason: Mapped[str | None] = mapped_column(String(500))
    held_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A rule said "do not recover": its reason, shown on the transaction; cleared by a start.
    no_recovery_reason: Mapped[str | None] = mapped_column(String(500))

    attempts: Mapped[list[RecoveryAttempt]] = relationship(
        back_populates="transaction", order_by="RecoveryAttempt.created_at"
    )

    @property
    def decline_category(self) -> str:
        return category(self.failure_code)

    @property
    def is_closed(self) -> bool:
        return self.status == S.CANCELLED

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)

    def __repr__(self) -> str:
        return f"<Transaction {self.transaction_ref} {self.status}>"


from recovery.models.recovery_attempt import RecoveryAttempt  # noqa: E402
