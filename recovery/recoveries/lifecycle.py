"""A recovery's life: started, cancelled, its link opened, its emails unsubscribed from, ended.

Plain functions over a SQLAlchemy session; no request globals. The caller's
boundary commits (request, job, command). What must follow the commit is
registered here, so every caller gets it: a start places its first send, a
cancel removes its waiting send and switches off the ways to pay it left open.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from recovery import audit
from recovery.audit import Actor
from recovery.campaigns import plan
from recovery.logs import get_logger
from recovery.messaging.contacts import address_for, available_channels, suppress, suppressed_channels
from recovery.models import (
    AttemptStatus,
    Campaign,
    CampaignVersion,
    Channel,
    Message,
    MessageStatus,
    Organization,
    RecoveryAttempt,
    StepAction,
    SuppressionReason,
    Transaction,
    TransactionStatus,
)
from recovery.models.base import DbSession
from recovery.money import card_charge_problem
from recovery.recoveries import scheduling
from recovery.recoveries.refusals import AlreadyActive, RecoveryRefused
from recovery.recoveries.schedule import format_schedule, parse_schedule, send_time
from recovery.rules.decision import Decision
from recovery.unit_of_work import on_commit

log = get_logger("recovery.recoveries")

A = AttemptStatus
M = MessageStatus

PAID = frozenset({TransactionStatus.RECOVERED, TransactionStatus.REFUNDED})
# The timeline's words for a cancelled recovery; the Recovery card and the API docs say the same.
CANCELLED_SUMMARY = "the customer's link no longer works; the transaction stays open for a new recovery"


@dataclass(frozen=True)
class RecoveryStarted:
    attempt: RecoveryAttempt


@dataclass(frozen=True)
class RecoveryCancelled:
    attempt: RecoveryAttempt
    # The send job that was waiting; removed from the queue after the commit.
    pending_job_id: str | None


# --- finding attempts ---------------------------------------------------------------


def active_attempt(session: DbSession, transaction_id: int) -> RecoveryAttempt | None:
    return session.scalar(
        select(RecoveryAttempt).where(
            RecoveryAttempt.transaction_id == transaction_id, RecoveryAttempt.status.in_(A.ACTIVE)
        )
    )


def get_for_org(session: DbSession, organization_id: int, attempt_id: int) -> RecoveryAttempt | None:
    return session.scalar(
        select(RecoveryAttempt).where(
            RecoveryAttempt.id == attempt_id, RecoveryAttempt.organization_id == organization_id
        )
    )


def get_by_token(session: DbSession, token: str) -> RecoveryAttempt | None:
    if not token or len(token) > 64:
        return None
    return session.scalar(select(RecoveryAttempt).where(RecoveryAttempt.token == token))


# --- start ----------------------------------------------------------------------------


def start_recovery(
    session: DbSession,
    transaction: Transaction,
    actor: Actor,
    *,
    now: datetime,
    channels: Sequence[str] | None = None,
    schedule: str | Sequence[object] | None = None,
    allow_fallback: bool | None = None,
    campaign_version: CampaignVersion | None = None,
    decision: Decision | None = None,
) -> RecoveryStarted:
    """Create the transaction's recovery attempt and move it to recovering; its first send follows the commit.

    `channels` None means every channel the customer can be reached on;
    `schedule` None means the organization's; `allow_fallback` None means
    yes if the organization lets any channel fall back. With
    `campaign_version`, the attempt follows that version's steps instead
    (its plan, fixed now) and its link lives as long as the campaign says;
    `decision` is the rule that chose it. Raises RecoveryRefused
    (AlreadyActive if an attempt is running).
    """
    organization = session.get(Organization, transaction.organization_id)
    assert organization is not None
    _refuse_unstartable(organization, transaction)
    running = active_attempt(session, transaction.id)
    if running is not None:
        raise AlreadyActive(running.id)
    if campaign_version is not None:
        if schedule is not None:
            raise RecoveryRefused("Give a campaign or a schedule, not both.", field="schedule")
        return _start_campaign(
            session,
            organization,
            transaction,
            actor,
            campaign_version,
            decision,
            now=now,
            channels=channels,
            allow_fallback=allow_fallback,
        )
    chosen = _clean_channels(session, transaction, channels)
    days = parse_schedule(schedule if schedule is not None else organization.recovery_schedule)
    lifetime = timedelta(days=organization.attempt_lifetime_days)
    if timedelta(days=days[-1]) >= lifetime:
        raise RecoveryRefused(
            f"The last message (day {days[-1]}) must come before the link expires "
            f"after {organization.attempt_lifetime_days} days.",
            field="schedule",
        )
    attempt = RecoveryAttempt(
        organization_id=transaction.organization_id,
        transaction_id=transaction.id,
        channel=Channel.BOTH if len(chosen) == 2 else chosen[0],
        # 256 bits from the OS's CSPRNG, 43 URL-safe characters: the customer's secret link.
        token=secrets.token_urlsafe(32),
        status=A.CREATED,
        schedule=format_schedule(days),
        step=0,
        allow_fallback=bool(organization.fallback_set) if allow_fallback is None else allow_fallback,
        max_retries=len(days) - 1,
        messages_sent=0,
        created_at=now,
        expires_at=now + lifetime,
        next_send_at=send_time(organization, transaction, now + timedelta(days=days[0])),
    )
    return _begin(session, actor, attempt, transaction, chosen, now)


def _begin(
    session: DbSession,
    actor: Actor,
    attempt: RecoveryAttempt,
    transaction: Transaction,
    chosen: list[str],
    now: datetime,
    decision: Decision | None = None,
) -> RecoveryStarted:
    attempt.transition(A.SCHEDULED)
    _add_attempt(session, attempt)
    transaction.transition(TransactionStatus.RECOVERING)
    _record_start(session, actor, attempt, transaction, chosen, now, decision)
    assert attempt.next_send_at is not None
    scheduling.schedule_after_commit(session, attempt.id, attempt.step, attempt.next_send_at)
    return RecoveryStarted(attempt)


def _start_campaign(
    session: DbSession,
    organization: Organization,
    transaction: Transaction,
    actor: Actor,
    version: CampaignVersion,
    decision: Decision | None,
    *,
    now: datetime,
    channels: Sequence[str] | None,
    allow_fallback: bool | None,
) -> RecoveryStarted:
    """`start_recovery` with a campaign version: the attempt runs its plan, fixed now."""
    campaign = session.get(Campaign, version.campaign_id)
    if campaign is None or campaign.organization_id != transaction.organization_id:
        raise RecoveryRefused("No such campaign.", field="campaign_id", status=404)
    if campaign.archived_at is not None:
        raise RecoveryRefused(
            f'The campaign "{campaign.name}" is archived; choose another.', field="campaign_id"
        )
    steps = plan.build(version, start=now, failed_at=transaction.failed_at)
    if any(step["action"] in StepAction.MESSAGES for step in steps) or channels is not None:
        chosen = _clean_channels(session, transaction, channels)
    else:
        # Nothing will be sent to the customer (staff alerts, card retries): no address is needed.
        chosen = available_channels(session, transaction, suppressed_channels(session, transaction))
    messages = sum(1 for step in steps if step["action"] in StepAction.MESSAGES)
    attempt = RecoveryAttempt(
        organization_id=transaction.organization_id,
        transaction_id=transaction.id,
        channel=Channel.BOTH if len(chosen) == 2 else (chosen or [Channel.EMAIL])[0],
        token=secrets.token_urlsafe(32),  # as in `start_recovery`: the customer's secret link
        status=A.CREATED,
        # Each step's day, for the readers of `schedule_days` (the API's "schedule").
        schedule=format_schedule([int(step["offset_minutes"]) // 1440 for step in steps]),
        step=0,
        allow_fallback=bool(organization.fallback_set) if allow_fallback is None else allow_fallback,
        max_retries=max(messages - 1, 0),
        messages_sent=0,
        created_at=now,
        expires_at=now + timedelta(days=version.link_lifetime_days),
        campaign_version_id=version.id,
        plan=steps,
        rule_id=decision.rule_id if decision else None,
        rule_name=decision.rule_name if decision else None,
        rule_version=decision.rule_version if decision else None,
        decision=decision.sentence[:500] if decision else None,
    )
    first = plan.planned_at(attempt, 0)
    attempt.next_send_at = send_time(organization, transaction, first) if attempt.is_message_step else first
    return _begin(session, actor, attempt, transaction, chosen, now, decision)


def _refuse_unstartable(organization: Organization, transaction: Transaction) -> None:
    """Raise RecoveryRefused if the transaction itself rules a recovery out."""
    if transaction.status in PAID:
        raise RecoveryRefused(f"Transaction {transaction.transaction_ref} is already paid.", status=409)
    if transaction.status == TransactionStatus.CANCELLED:
        raise RecoveryRefused(
            f"Transaction {transaction.transaction_ref} is closed: nothing is sent for it. "
            "Reopen it to start a recovery.",
            status=409,
        )
    if transaction.failure_code and transaction.failure_code in organization.excluded_codes:
        raise RecoveryRefused(
            f"Failure code {transaction.failure_code} is excluded from recovery in the settings.",
            status=422,
        )
    problem = card_charge_problem(transaction.amount, transaction.currency)
    if problem:
        # Every link we sent would end on a refusal at Stripe.
        raise RecoveryRefused(problem, field="amount")


def _clean_channels(
    session: DbSession, transaction: Transaction, requested: Sequence[str] | None
) -> list[str]:
    suppressed = suppressed_channels(session, transaction)
    if requested is None:
        channels = available_channels(session, transaction, suppressed)
        if not channels:
            raise RecoveryRefused(
                "The customer has no email address or phone number we may use; add one first.",
                field="channels",
            )
        return channels
    if isinstance(requested, str) or not all(isinstance(c, str) for c in requested):
        raise RecoveryRefused('channels must be a list such as ["email", "sms"].', field="channels")
    channels = []
    for channel in requested:
        if channel not in (Channel.EMAIL, Channel.SMS):
            raise RecoveryRefused(f"Unknown channel {channel!r}; use email or sms.", field="channels")
        noun = "email address" if channel == Channel.EMAIL else "phone number"
        if not address_for(transaction, channel):
            raise RecoveryRefused(f"The customer has no {noun}.", field="channels")
        if channel in suppressed:
            why = "opted out" if suppressed[channel] == SuppressionReason.OPTED_OUT else "is undeliverable"
            raise RecoveryRefused(f"The customer's {noun} {why}.", field="channels")
        if channel not in channels:
            channels.append(channel)
    if not channels:
        raise RecoveryRefused("Choose at least one channel: email or sms.", field="channels")
    return channels


def _add_attempt(session: DbSession, attempt: RecoveryAttempt) -> None:
    try:
        with session.begin_nested():
            session.add(attempt)
            session.flush()
    except IntegrityError:
        # uq_recovery_attempt_active_transaction: someone started one a moment ago.
        raise AlreadyActive(None) from None


def _record_start(
    session: DbSession,
    actor: Actor,
    attempt: RecoveryAttempt,
    transaction: Transaction,
    channels: list[str],
    now: datetime,
    decision: Decision | None = None,
) -> None:
    audit.record(
        session,
        actor,
        "recovery.started",
        at=now,
        transaction_id=transaction.id,
        target_type="recovery_attempt",
        target_id=attempt.id,
        channels=channels,
        schedule=attempt.schedule,
        expires_at=attempt.expires_at.isoformat(),
        **_campaign_details(session, attempt, decision),
    )
    log.info(
        "recovery_started",
        attempt_id=attempt.id,
        transaction_ref=transaction.transaction_ref,
        organization_id=transaction.organization_id,
        channels=channels,
        schedule=attempt.schedule,
    )


def _campaign_details(
    session: DbSession, attempt: RecoveryAttempt, decision: Decision | None
) -> dict[str, Any]:
    """What the start's audit event adds for a campaign: which one, its version, the rule and why."""
    if attempt.campaign_version_id is None or attempt.plan is None:
        return {}
    version = session.get(CampaignVersion, attempt.campaign_version_id)
    campaign = session.get(Campaign, version.campaign_id) if version else None
    if version is None or campaign is None:
        return {}
    words = f'Campaign "{campaign.name}" (version {version.version}): {plan.describe(attempt.plan)}.'
    if decision is not None:
        words = f"{decision.sentence} {words}"
    return {
        "campaign_id": campaign.id,
        "campaign": campaign.name,
        "campaign_version": version.version,
        "rule_id": attempt.rule_id,
        "rule": attempt.rule_name,
        "rule_version": attempt.rule_version,
        "summary": words,
    }


# --- end --------------------------------------------------------------------------------


def close_attempt(attempt: RecoveryAttempt, status: str, now: datetime) -> None:
    """End the attempt; a recovering transaction follows: unrecovered, or failed (open) if cancelled.

    A cancelled recovery leaves the transaction open, not closed (see
    `Transaction`): staff may start another one.
    """
    attempt.transition(status)
    attempt.next_send_at = None
    attempt.ended_at = now
    transaction = attempt.transaction
    if status == A.COMPLETED:
        attempt.completed_at = now
    elif status == A.CANCELLED:
        if transaction.status == TransactionStatus.RECOVERING:
            transaction.transition(TransactionStatus.FAILED)
    elif transaction.status == TransactionStatus.RECOVERING:
        transaction.transition(TransactionStatus.UNRECOVERED)
    log.info(
        "recovery_ended",
        attempt_id=attempt.id,
        status=status,
        transaction_ref=transaction.transaction_ref,
        organization_id=attempt.organization_id,
    )


def cancel_recovery(
    session: DbSession, attempt: RecoveryAttempt, actor: Actor, *, now: datetime
) -> RecoveryCancelled:
    """Stop the attempt: nothing more is sent, whatever is already queued.

    Every send job re-reads the attempt before sending, so the cancel holds even
    for a job already in the queue. After the commit, the waiting job is
    removed to keep the queue tidy, and the customer's Checkout Session (up to
    a day) and Payment Link (no end) are switched off: they would otherwise
    still take money for a recovery the merchant stopped.
    """
    if not attempt.is_active:
        raise RecoveryRefused(f"This recovery is already {attempt.status}.", status=409)
    waiting = (
        scheduling.send_job_id(attempt.id, attempt.step, attempt.next_send_at)
        if attempt.next_send_at
        else None
    )
    close_attempt(attempt, A.CANCELLED, now)
    for message in session.scalars(
        select(Message).where(Message.attempt_id == attempt.id, Message.status == M.QUEUED)
    ):
        message.transition(M.CANCELLED)
    audit.record(
        session,
        actor,
        "recovery.cancelled",
        at=now,
        transaction_id=attempt.transaction_id,
        target_type="recovery_attempt",
        target_id=attempt.id,
        messages_sent=attempt.messages_sent,
        summary=CANCELLED_SUMMARY,
    )
    on_commit(session, scheduling.after_cancel, attempt.transaction_id, waiting)
    return RecoveryCancelled(attempt, waiting)


# --- the customer ----------------------------------------------------------------------


def record_click(session: DbSession, attempt: RecoveryAttempt, *, now: datetime) -> bool:
    """Note that the customer opened the link; True the first time (then it is on the timeline)."""
    if attempt.clicked_at is not None:
        return False
    attempt.clicked_at = now
    if attempt.status in (A.SCHEDULED, A.NOTIFIED):
        attempt.transition(A.CLICKED)
    audit.record(
        session,
        Actor.system(attempt.organization_id, "customer"),
        "recovery.link_opened",
        at=now,
        transaction_id=attempt.transaction_id,
        target_type="recovery_attempt",
        target_id=attempt.id,
    )
    return True


def unsubscribe_email(session: DbSession, attempt: RecoveryAttempt, *, now: datetime) -> bool:
    """Opt the customer's email address out of the organization's messages; True if it was new.

    Later sends of any attempt skip the address, and SMS does not take over
    (`effective_channels`): the customer asked to stop the reminders. An attempt
    left with no channel sends nothing more, but its link keeps working until it
    expires: the unsubscribe page tells the customer they can still pay with it
    (`answers.finish_step`).
    """
    transaction = attempt.transaction
    address = transaction.customer_email
    if not address or Channel.EMAIL in {c for c, r in suppressed_channels(session, transaction).items() if r}:
        return False
    suppress(
        session,
        attempt.organization_id,
        Channel.EMAIL,
        address,
        SuppressionReason.OPTED_OUT,
        detail="One-click unsubscribe",
    )
    audit.record(
        session,
        Actor.system(attempt.organization_id, "customer"),
        "recovery.unsubscribed",
        transaction_id=attempt.transaction_id,
        target_type="recovery_attempt",
        target_id=attempt.id,
        channel=Channel.EMAIL,
    )
    log.info("recovery_unsubscribed", attempt_id=attempt.id, organization_id=attempt.organization_id)
    return True
