"""The steps of a campaign that send no message to the customer: card retries and staff alerts.

The send job (`recoveries.sending`) finds an attempt due at such a step and
hands it here, under the attempt's lock, after the same checks as a message
(paid, cancelled, expired). The step does its part, then the attempt moves on
to its next step (`answers.advance`). What must follow the commit (the card
retry's job, the alert's sending) is registered with `on_commit`.
"""

from __future__ import annotations

from datetime import datetime

from recovery import audit, queue
from recovery.audit import Actor
from recovery.campaigns import plan
from recovery.campaigns.ending import campaign_of
from recovery.logs import get_logger
from recovery.models import Organization, RecoveryAttempt, StepAction
from recovery.models.base import DbSession
from recovery.payments.jobs import queue_retry_card
from recovery.recoveries import scheduling
from recovery.recoveries.answers import SendResult, advance
from recovery.staffmail import alerts
from recovery.unit_of_work import on_commit

log = get_logger("recovery.campaigns")

# The card retry, written by the payments package; named by path (recovery.queue).
RETRY_CARD_JOB = "recovery.payments.jobs.retry_card"


def retry_job_id(attempt_id: int, step: int) -> str:
    return queue.job_id("card-retry", attempt_id, step)


def queue_card_retry(attempt_id: int, step: int) -> bool:
    """Enqueue the retry of the attempt's step once, tried again on a transient Stripe error.

    The payments package owns the job and its retry policy (`payments.jobs.queue_retry_card`).
    """
    return queue_retry_card(attempt_id, step)


def run_step(
    session: DbSession, attempt: RecoveryAttempt, step: int, *, now: datetime, base_url: str
) -> SendResult:
    """Do the attempt's current step, a card retry or a staff alert, and move the attempt on."""
    action = attempt.action_at(step)
    if action == StepAction.RETRY_CARD:
        on_commit(session, queue_card_retry, attempt.id, step)
        _record(session, attempt, step, "recovery.card_retry_queued", "Card retry queued", now)
        outcome = "card_retry_queued"
    elif action == StepAction.NOTIFY_STAFF:
        outcome = _notify_staff(session, attempt, step, now=now, base_url=base_url)
    else:
        # Past the last step (the send job only comes at the expiry then, which ends the
        # attempt first): nothing to do but wait for the expiry.
        log.warning("campaign_step_missing", attempt_id=attempt.id, step=step, action=action)
        attempt.next_send_at = attempt.expires_at
        return SendResult("stale", attempt.id, attempt.step, attempt.next_send_at)
    result = advance(session, attempt, step, now)
    log.info("campaign_step_done", attempt_id=attempt.id, step=step, action=action, outcome=outcome)
    return SendResult(outcome, attempt.id, result.step, result.next_send_at)


def _notify_staff(
    session: DbSession, attempt: RecoveryAttempt, step: int, *, now: datetime, base_url: str
) -> str:
    organization = session.get(Organization, attempt.organization_id)
    assert organization is not None
    transaction = attempt.transaction
    found = campaign_of(session, attempt)
    why = attempt.decision or (f'The campaign "{found[0].name}" has a staff alert step.' if found else None)
    emails = alerts.queue_alert(
        session,
        organization,
        transaction,
        base_url=base_url,
        why=why,
        job_key=f"{attempt.id}-{step}",
    )
    if emails:
        to = ", ".join(email.recipient for email in emails)
        _record(session, attempt, step, "recovery.staff_alerted", f"Staff alerted by email ({to})", now)
        return "staff_alerted"
    _record(
        session,
        attempt,
        step,
        "recovery.staff_alerted",
        "Staff alert skipped: the organization has no alert address and no owner or admin",
        now,
    )
    return "no_staff"


def _record(
    session: DbSession, attempt: RecoveryAttempt, step: int, action: str, words: str, now: datetime
) -> None:
    audit.record(
        session,
        Actor.system(attempt.organization_id, "campaign"),
        action,
        at=now,
        transaction_id=attempt.transaction_id,
        target_type="recovery_attempt",
        target_id=attempt.id,
        step=step,
        summary=f"{words} (step {step + 1} of {attempt.step_count}).",
    )


def skip_to_next_message(session: DbSession, attempt: RecoveryAttempt, *, now: datetime) -> int | None:
    """Pass the card retries ahead and make the step after them (the next message) due now.

    For a card retry that asks for the customer's authentication: only a
    message with the pay link can get it, and retrying the card again would
    ask again. Returns the step now due; None (nothing changed) if the attempt
    is not active, follows no plan, or has no message step left. A staff
    alert before that message is not passed: it becomes due now, the message
    after it. Call with the attempt locked (`recoveries.claims.lock_attempt`);
    the send is placed after the commit.
    """
    if not attempt.is_active or attempt.plan is None:
        return None
    if plan.next_message_step(attempt, attempt.step - 1) is None:
        return None
    target = attempt.step
    while attempt.action_at(target) == StepAction.RETRY_CARD:
        target += 1
    attempt.step = target
    attempt.next_send_at = now
    scheduling.schedule_after_commit(session, attempt.id, target, now)
    audit.record(
        session,
        Actor.system(attempt.organization_id, "campaign"),
        "recovery.skipped_to_message",
        at=now,
        transaction_id=attempt.transaction_id,
        target_type="recovery_attempt",
        target_id=attempt.id,
        step=target,
        summary=f"The bank asks the customer to authenticate: card retries passed, step {target + 1} now.",
    )
    return target
