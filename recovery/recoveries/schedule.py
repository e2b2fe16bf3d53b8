"""The schedule of a recovery: the days its messages go out, and the instant each one may.

Plain arithmetic, no database: the merchant's days ("0,1,3,6") checked and
written back, each step's time moved out of the customer's quiet hours, and a
step that is late after a backlog spaced from the one before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import pairwise

from recovery.campaigns import plan
from recovery.messaging.quiet_hours import allowed_at
from recovery.models import Organization, RecoveryAttempt, Transaction
from recovery.recoveries.refusals import RecoveryRefused

MAX_STEPS = 10
MAX_SCHEDULE_DAY = 60
# The most a step overdue after a backlog waits after the previous send (`next_send_time`).
MAX_CATCH_UP_GAP = timedelta(days=1)


def parse_schedule(raw: str | Sequence[object] | None) -> list[int]:
    """Days after the start for each message, e.g. "0,1,3,6" or [0, 1, 3, 6]; RecoveryRefused if wrong."""
    if raw is None:
        raise RecoveryRefused("A schedule is required.", field="schedule")
    parts: Sequence[object] = [p for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw
    days: list[int] = []
    for part in parts:
        if isinstance(part, bool):
            raise RecoveryRefused("The schedule must be whole numbers of days.", field="schedule")
        try:
            day = int(part.strip()) if isinstance(part, str) else int(part)  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's 1e999 is infinity
            raise RecoveryRefused(
                f"The schedule must be whole numbers of days, like 0,1,3,6; got {part!r}.", field="schedule"
            ) from None
        if isinstance(part, float) and part != day:
            raise RecoveryRefused("The schedule must be whole numbers of days.", field="schedule")
        days.append(day)
    if not days:
        raise RecoveryRefused("The schedule needs at least one day, e.g. 0.", field="schedule")
    if len(days) > MAX_STEPS:
        raise RecoveryRefused(f"The schedule may have at most {MAX_STEPS} messages.", field="schedule")
    if any(d < 0 or d > MAX_SCHEDULE_DAY for d in days):
        raise RecoveryRefused(f"Schedule days must be 0 to {MAX_SCHEDULE_DAY}.", field="schedule")
    if any(b <= a for a, b in pairwise(days)):
        raise RecoveryRefused("Schedule days must increase, like 0,1,3,6.", field="schedule")
    return days


def format_schedule(days: Sequence[int]) -> str:
    return ",".join(str(d) for d in days)


def send_time(organization: Organization, transaction: Transaction, at: datetime) -> datetime:
    """`at`, or the end of the customer's quiet hours if `at` falls inside them."""
    return allowed_at(
        at,
        country=transaction.customer_country,
        phone=transaction.customer_phone,
        organization_zone=organization.timezone,
        quiet_hours=organization.quiet_hours,
    )


def next_send_time(organization: Organization, attempt: RecoveryAttempt, *, sent_at: datetime) -> datetime:
    """When the attempt's (new) step goes out: its day in the schedule, but not too soon after `sent_at`.

    After a backlog (workers down, a Redis flush) several steps are overdue at
    once, and would otherwise reach the customer seconds apart. Each step waits
    at least half its planned gap after the previous send, and at most a day:
    half, so that ordinary lateness (quiet hours, a queue minutes behind) leaves
    the merchant's timetable exactly as planned; at most a day, so that a late
    schedule still fits before the link expires, at no more than one message a
    day (the densest the default schedule sends).
    """
    if attempt.plan is not None:
        # A campaign's step: its own timing (campaigns/plan.py); quiet hours only for a message.
        due = plan.due_at(attempt, attempt.step, previous_at=sent_at)
        return send_time(organization, attempt.transaction, due) if attempt.is_message_step else due
    days = attempt.schedule_days
    planned = attempt.created_at + timedelta(days=days[attempt.step])
    gap = timedelta(days=days[attempt.step] - days[attempt.step - 1])
    earliest = sent_at + min(gap / 2, MAX_CATCH_UP_GAP)
    return send_time(organization, attempt.transaction, max(planned, earliest))
