"""One campaign of messages asking a customer to pay one transaction."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, ForeignKey, Index, String, text, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from recovery.models.base import Base, BigId, HasStatus, UTCDateTime, utcnow
from recovery.models.campaign import StepAction

if TYPE_CHECKING:
    from recovery.models.transaction import Transaction


class AttemptStatus:
    CREATED = "created"
    SCHEDULED = "scheduled"
    NOTIFIED = "notified"
    CLICKED = "clicked"
    COMPLETED = "completed"
    EXPIRED = "expired"
    EXHAUSTED = "exhausted"
    CANCELLED = "cancelled"
    FAILED = "failed"

    ACTIVE = (CREATED, SCHEDULED, NOTIFIED, CLICKED)
    ALL = (*ACTIVE, COMPLETED, EXPIRED, EXHAUSTED, CANCELLED, FAILED)
    # The outcomes the recovery rate counts (recovery/transactions/kpis.py): the
    # customer was asked and the asking is over. `failed` is not one: no message
    # ever reached the customer, so nobody was asked.
    FINISHED = (COMPLETED, EXPIRED, EXHAUSTED, CANCELLED)


A = AttemptStatus
_ENDINGS = frozenset({A.COMPLETED, A.EXPIRED, A.EXHAUSTED, A.CANCELLED, A.FAILED})

# A payment that lands after the attempt expired or ran out of messages still
# completes it; nothing else leaves a finished attempt.
ATTEMPT_TRANSITIONS = {
    A.CREATED: frozenset({A.SCHEDULED, A.NOTIFIED}) | _ENDINGS,
    A.SCHEDULED: frozenset({A.NOTIFIED, A.CLICKED}) | _ENDINGS,
    A.NOTIFIED: frozenset({A.CLICKED}) | _ENDINGS,
    A.CLICKED: _ENDINGS,
    A.EXPIRED: frozenset({A.COMPLETED}),
    A.EXHAUSTED: frozenset({A.COMPLETED}),
    A.COMPLETED: frozenset(),
    A.CANCELLED: frozenset(),
    A.FAILED: frozenset(),
}


class Channel:
    EMAIL = "email"
    SMS = "sms"
    BOTH = "both"

    ALL = (EMAIL, SMS, BOTH)


# The channels of each message step of a campaign, in sending order.
STEP_CHANNELS = {
    StepAction.EMAIL: (Channel.EMAIL,),
    StepAction.SMS: (Channel.SMS,),
    StepAction.EMAIL_AND_SMS: (Channel.EMAIL, Channel.SMS),
}


class RecoveryAttempt(HasStatus, Base):
    __tablename__ = "recovery_attempt"
    TRANSITIONS = ATTEMPT_TRANSITIONS
    __table_args__ = (
        Index("ix_recovery_attempt_org_status_created", "organization_id", "status", "created_at"),
        # The recovery rate: attempts that ended in a period (recovery/transactions/kpis.py).
        Index("ix_recovery_attempt_org_ended", "organization_id", "ended_at"),
        # The sweeper's due scan only ever looks at active attempts.
        Index(
            "ix_recovery_attempt_due",
            "next_send_at",
            postgresql_where=text("status IN ('scheduled', 'notified', 'clicked')"),
            sqlite_where=text("status IN ('scheduled', 'notified', 'clicked')"),
        ),
        # One active attempt per transaction, even when two staff press Start at once.
        Index(
            "uq_recovery_attempt_active_transaction",
            "transaction_id",
            unique=True,
            postgresql_where=text("status IN ('created', 'scheduled', 'notified', 'clicked')"),
            sqlite_where=text("status IN ('created', 'scheduled', 'notified', 'clicked')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    transaction_id: Mapped[int] = mapped_column(ForeignKey("transaction.id"), index=True)
    channel: Mapped[str] = mapped_column(String(8))
    token: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=A.CREATED)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    max_retries: Mapped[int] = mapped_column(default=3)
    messages_sent: Mapped[int] = mapped_column(default=0)
    next_send_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Days after the start at which each step is sent, e.g. "0,1,3,6"; `step` is
    # the next one to send. Once every step is sent, step == len(schedule) and
    # next_send_at is the expiry, when the attempt becomes exhausted.
    schedule: Mapped[str] = mapped_column(String(100), default="0,1,3,6", server_default="0,1,3,6")
    step: Mapped[int] = mapped_column(default=0, server_default="0")
    # Whether a permanently failing channel may be replaced by the other one.
    allow_fallback: Mapped[bool] = mapped_column(default=True, server_default=true())
    clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When the attempt reached its ending (completed, expired, exhausted, cancelled,
    # failed); a late payment after expiry moves it to the payment's time.
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # The campaign version it follows (None: a schedule given by hand, or an
    # attempt from before campaigns), and the rule that chose it: its id, name and
    # version at the time, and the sentence the timeline shows ("matched because ...").
    campaign_version_id: Mapped[int | None] = mapped_column(ForeignKey("campaign_version.id"))
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("recovery_rule.id", ondelete="SET NULL"))
    rule_name: Mapped[str | None] = mapped_column(String(200))
    rule_version: Mapped[int | None] = mapped_column()
    decision: Mapped[str | None] = mapped_column(String(500))
    # The campaign's steps as this attempt runs them, fixed at the start:
    # [{"action": ..., "offset_minutes": ...}, ...] (recovery/campaigns/plan.py);
    # None: every step sends a message on `channel`, on the days of `schedule`.
    plan: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)

    transaction: Mapped[Transaction] = relationship(back_populates="attempts")

    def transition(self, new: str) -> bool:
        """Move along ATTEMPT_TRANSITIONS, stamping `ended_at` on an ending.

        Stamped with the clock; callers that know the moment better (a
        webhook's event time, a send run's `now`) overwrite it.
        """
        moved = super().transition(new)
        if moved and new in _ENDINGS:
            self.ended_at = utcnow()
        return moved

    @property
    def is_active(self) -> bool:
        return self.status in A.ACTIVE

    @property
    def schedule_days(self) -> list[int]:
        return [int(day) for day in self.schedule.split(",") if day.strip()]

    # --- the steps, one way for both kinds: a campaign's plan, or the days of `schedule` ---

    @property
    def step_count(self) -> int:
        """How many steps the attempt has; `step` equals it once they are all done."""
        return len(self.plan) if self.plan is not None else len(self.schedule_days)

    def action_at(self, step: int) -> str | None:
        """What step `step` does (a StepAction); None past the last step. A schedule's steps are messages."""
        if not 0 <= step < self.step_count:
            return None
        return str(self.plan[step]["action"]) if self.plan is not None else StepAction.EMAIL_AND_SMS

    @property
    def step_action(self) -> str | None:
        """What the current step does; None once every step is done."""
        return self.action_at(self.step)

    @property
    def is_message_step(self) -> bool:
        return self.step_action in StepAction.MESSAGES

    @property
    def base_channels(self) -> tuple[str, ...]:
        """The channels the attempt was started on, in sending order."""
        return (Channel.EMAIL, Channel.SMS) if self.channel == Channel.BOTH else (self.channel,)

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels the current step sends on, in sending order.

        A schedule's step: the attempt's channels. A campaign's message step:
        its own channels among the attempt's; a step on a channel the attempt
        lacks (an SMS step, no phone number) falls back to the attempt's
        channels if fallback is allowed, else it sends nothing and is passed.
        """
        base = self.base_channels
        action = self.step_action
        if self.plan is None or action not in STEP_CHANNELS:
            return base
        wanted = tuple(c for c in STEP_CHANNELS[action] if c in base)
        return wanted or (base if self.allow_fallback else ())
