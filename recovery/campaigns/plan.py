"""An attempt's plan: the steps of its campaign version, fixed at the start with their planned times.

Stored on the attempt (`RecoveryAttempt.plan`), so that editing the campaign
later changes nothing of a recovery already running. Each entry is
{"action", "delay_hours", "after", "offset_minutes"}: `offset_minutes` counts
from the start of the recovery. "after failure" delays count from the
transaction's failure, "after previous" from the step before (the first
step's previous is the start); a step already due at the start is due at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from recovery.campaigns.steps import AFTER_FAILURE
from recovery.models import CampaignVersion, RecoveryAttempt, StepAction

# The most a message step made late by a backlog waits after the step before it (as
# `schedule.MAX_CATCH_UP_GAP` does for schedules): a late plan still fits its link's life.
MAX_CATCH_UP_GAP = timedelta(days=1)


def build(version: CampaignVersion, *, start: datetime, failed_at: datetime | None) -> list[dict[str, Any]]:
    """The version's steps with their offsets from `start` in minutes (never negative)."""
    failure = failed_at if failed_at is not None and failed_at <= start else start
    plan: list[dict[str, Any]] = []
    previous = start
    for step in version.steps:
        delay = timedelta(hours=int(step["delay_hours"]))
        at = failure + delay if step["after"] == AFTER_FAILURE else previous + delay
        at = max(at, start)
        plan.append(
            {
                "action": step["action"],
                "delay_hours": int(step["delay_hours"]),
                "after": step["after"],
                "offset_minutes": int((at - start).total_seconds() // 60),
            }
        )
        previous = at
    return plan


def planned_at(attempt: RecoveryAttempt, step: int) -> datetime:
    """When step `step` was planned at the start (a schedule's: its day)."""
    if attempt.plan is None:
        return attempt.created_at + timedelta(days=attempt.schedule_days[step])
    return attempt.created_at + timedelta(minutes=int(attempt.plan[step]["offset_minutes"]))


def due_at(attempt: RecoveryAttempt, step: int, *, previous_at: datetime) -> datetime:
    """When plan step `step` is due, the step before it done at `previous_at`.

    Its planned time, unless the step before was late: "after previous" then
    waits its whole delay after it; "after failure" waits half its planned gap
    after it (at most MAX_CATCH_UP_GAP), so that a backlog does not reach the
    customer seconds apart.
    """
    assert attempt.plan is not None
    planned = planned_at(attempt, step)
    entry = attempt.plan[step]
    if entry["after"] == AFTER_FAILURE:
        gap = planned - planned_at(attempt, step - 1) if step else timedelta(0)
        earliest = previous_at + min(gap / 2, MAX_CATCH_UP_GAP)
    else:
        earliest = previous_at + timedelta(hours=int(entry["delay_hours"]))
    return max(planned, earliest)


def messages_before(attempt: RecoveryAttempt, step: int) -> int:
    """How many message steps come before step `step` (the first message is not a reminder)."""
    return sum(1 for earlier in range(step) if attempt.action_at(earlier) in StepAction.MESSAGES)


def next_message_step(attempt: RecoveryAttempt, after: int) -> int | None:
    """The first message step after step `after`; None if none is left."""
    for step in range(after + 1, attempt.step_count):
        if attempt.action_at(step) in StepAction.MESSAGES:
            return step
    return None


def describe(plan: list[dict[str, Any]]) -> str:
    """The plan in words for the timeline: "email at once, retry_card after 24 h, ..."."""
    parts = []
    for entry in plan:
        minutes = int(entry["offset_minutes"])
        if minutes == 0:
            when = "at once"
        elif minutes % 60 == 0:
            when = f"after {minutes // 60} h"
        else:
            when = f"after {minutes} min"
        parts.append(f"{entry['action']} {when}")
    return ", ".join(parts)
