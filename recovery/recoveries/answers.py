"""Recording what the providers answered, and moving the attempt on: its next step, a retry, or the end.

A message claimed again since (its `tries` moved on) belongs to the run that
claimed it: this run's answer for it is not recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.messaging.contacts import (
    BatchContacts,
    address_for,
    available_channels,
    effective_channels,
    suppress,
    suppressed_channels,
)
from recovery.messaging.providers import Delivery, Outcome
from recovery.models import (
    AttemptStatus,
    Channel,
    Message,
    MessageStatus,
    Organization,
    RecoveryAttempt,
    SuppressionReason,
    Transaction,
)
from recovery.models.base import DbSession
from recovery.models.message import DELIVERY_FAILED
from recovery.recoveries.claims import MAX_TRIES, lock_attempt
from recovery.recoveries.lifecycle import close_attempt
from recovery.recoveries.schedule import next_send_time

log = get_logger("recovery.recoveries")

A = AttemptStatus
M = MessageStatus

# The delays between the tries of one message (at most MAX_TRIES).
RETRY_DELAYS = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1))
# (message id, tries claimed, the provider's answer)
Answer = tuple[int, int, Delivery]


@dataclass(frozen=True)
class SendResult:
    """What a send job did, and when the attempt's next send is due (None: nothing more)."""

    outcome: str
    attempt_id: int
    step: int
    next_send_at: datetime | None
    sent: int = 0
    channels: tuple[str, ...] = field(default=())


def record_locked(
    session: DbSession,
    attempt_id: int,
    answers: list[Answer],
    now: datetime,
    contacts: BatchContacts,
) -> bool:
    """`record_answers` under the attempt's lock (taken here); the caller's next commit releases it."""
    attempt = lock_attempt(session, attempt_id)
    assert attempt is not None  # attempts are never deleted
    return record_answers(session, attempt, answers, now, contacts)


def record_answers(
    session: DbSession,
    attempt: RecoveryAttempt,
    results: list[Answer],
    now: datetime,
    contacts: BatchContacts,
) -> bool:
    """Store each (message id, tries claimed, answer); True if an address turned out dead (fallback due).

    A message claimed again since (its `tries` moved on) belongs to the run that
    claimed it: this run's answer for it is not recorded.
    """
    dead = False
    for message_id, tries, delivery in results:
        message = session.get(Message, message_id)  # loaded under the attempt's lock (send_batch)
        assert message is not None
        if message.tries != tries or message.status not in (M.SENDING, M.UNKNOWN):
            log.warning("recovery_message_claim_lost", message_id=message_id, attempt_id=attempt.id)
            continue
        dead = _record(session, attempt, message, delivery, now, contacts) or dead
        log.info(
            "recovery_message_" + delivery.outcome,
            message_id=message.id,
            attempt_id=attempt.id,
            step=message.step,
            channel=message.channel,
            provider=delivery.provider,
            provider_id=delivery.provider_id,
            error=delivery.error,
        )
    return dead


def _record(
    session: DbSession,
    attempt: RecoveryAttempt,
    message: Message,
    delivery: Delivery,
    now: datetime,
    contacts: BatchContacts,
) -> bool:
    """Move the message as its provider answered; True if that proved its address dead."""
    message.provider = delivery.provider
    message.error = delivery.error
    if delivery.outcome == Outcome.SENT:
        message.transition(M.SENT)
        message.provider_id = delivery.provider_id
        message.sent_at = now
        attempt.messages_sent += 1
        _settle_early_report(session, message)
    elif delivery.outcome == Outcome.RETRY:
        message.transition(M.FAILED)
    elif delivery.outcome == Outcome.UNKNOWN:
        message.transition(M.UNKNOWN)
    elif delivery.outcome in (Outcome.UNDELIVERABLE, Outcome.OPTED_OUT):
        message.transition(M.UNDELIVERABLE)
        reason = (
            SuppressionReason.OPTED_OUT
            if delivery.outcome == Outcome.OPTED_OUT
            else SuppressionReason.UNDELIVERABLE
        )
        suppress(
            session,
            attempt.organization_id,
            message.channel,
            message.recipient,
            reason,
            detail=delivery.error,
            message_id=message.id,
        )
        contacts.add(attempt.organization_id, message.channel, message.recipient, reason)
        return True
    else:
        message.transition(M.FAILED)
        message.tries = MAX_TRIES  # a permanent refusal: no further try
    return False


def _settle_early_report(session: DbSession, message: Message) -> None:
    """Apply a delivery report that came before our record of the send.

    Twilio may call back while the batch is still sending its other messages:
    the report was stored (`delivery.apply_status`) on a message still
    `sending`, which it could not move. Now that the message is sent, it does.
    """
    report = message.delivery_status
    if report == "delivered":
        message.transition(M.DELIVERED)
    elif report in DELIVERY_FAILED:
        # apply_status suppressed the number if the error proved it dead.
        transaction = session.get(Transaction, message.transaction_id)
        if transaction is not None and message.channel in suppressed_channels(session, transaction):
            message.transition(M.UNDELIVERABLE)
        else:
            message.transition(M.FAILED)
            message.tries = MAX_TRIES  # failed after the provider took it: never re-sent


def finish_step(
    session: DbSession,
    attempt: RecoveryAttempt,
    step: int,
    now: datetime,
    messages: Sequence[Message],
    suppressed: dict[str, str],
) -> SendResult:
    """Retry the step later, or move the attempt on to its next step (or its expiry).

    `messages` are the step's messages, as the batch holds them.
    """
    if attempt.step != step:
        return SendResult("stale", attempt.id, attempt.step, attempt.next_send_at)
    if any(m.status == M.SENDING for m in messages):
        # Another run of this job is talking to a provider: it finishes the step. (A
        # stopped one's claims are settled by `repair.repair_abandoned`.) An unknown
        # message does not hold the step: it is not sent again, and not counted as sent.
        return SendResult("in_progress", attempt.id, step, attempt.next_send_at)
    retrying = [m for m in messages if m.status == M.FAILED and m.tries < MAX_TRIES]
    if retrying:
        tries = max(m.tries for m in retrying)
        attempt.next_send_at = now + RETRY_DELAYS[min(tries, len(RETRY_DELAYS)) - 1]
        return SendResult("retry", attempt.id, step, attempt.next_send_at)
    sent = sum(1 for m in messages if m.status in (M.SENT, M.DELIVERED))
    if sent and attempt.status == A.SCHEDULED:
        attempt.transition(A.NOTIFIED)
    if not _reachable(session, attempt, suppressed):
        if not attempt.messages_sent:
            # No message ever reached the customer: nobody holds the link, so the
            # attempt has failed, and staff may fix the contact details and start again.
            close_attempt(attempt, A.FAILED, now)
            return SendResult("no_channel", attempt.id, step, None, sent)
        # The customer has a link from an earlier message, and may still pay with it
        # (the unsubscribe page says so): stop messaging, keep the link.
        _send_no_more(attempt)
        _record_sending_stopped(session, attempt, suppressed)
        return SendResult("no_channel", attempt.id, attempt.step, attempt.next_send_at, sent)
    return advance(session, attempt, step, now, sent)


def advance(
    session: DbSession, attempt: RecoveryAttempt, step: int, now: datetime, sent: int = 0
) -> SendResult:
    """Move the attempt from step `step`, done at `now`, to its next step (or to waiting for the expiry)."""
    attempt.step = step + 1
    if attempt.step < attempt.step_count:
        organization = session.get(Organization, attempt.organization_id)
        assert organization is not None
        due = next_send_time(organization, attempt, sent_at=now)
        if due < attempt.expires_at:
            attempt.next_send_at = due
            return SendResult("sent", attempt.id, attempt.step, due, sent)
        # A step that would come after the link expires does not happen.
    _send_no_more(attempt)
    return SendResult("sent", attempt.id, attempt.step, attempt.next_send_at, sent)


def _send_no_more(attempt: RecoveryAttempt) -> None:
    """End the attempt's schedule: the link stays valid until it expires, then the attempt is exhausted.

    `claims.stop_reason` does the closing, at the send due at the expiry.
    """
    attempt.step = attempt.step_count
    attempt.next_send_at = attempt.expires_at


def _reachable(session: DbSession, attempt: RecoveryAttempt, suppressed: dict[str, str]) -> bool:
    """Whether any message can still reach the customer.

    A schedule: the step's channels, a dead one replaced if allowed. A
    campaign: the attempt's channels, not only this step's (an SMS step
    passed for want of a phone number leaves its email steps).
    """
    if attempt.plan is None:
        return bool(effective_channels(session, attempt, attempt.transaction, suppressed))
    usable = available_channels(session, attempt.transaction, suppressed)
    return any(c in usable for c in attempt.base_channels) or (attempt.allow_fallback and bool(usable))


def _record_sending_stopped(session: DbSession, attempt: RecoveryAttempt, suppressed: dict[str, str]) -> None:
    """Put on the transaction's timeline why no more messages go out, though the link still works."""
    transaction = attempt.transaction
    reasons = []
    for channel in attempt.base_channels:
        name = "email" if channel == Channel.EMAIL else "text messages"
        if suppressed.get(channel) == SuppressionReason.OPTED_OUT:
            reasons.append(f"the customer opted out of {name}")
        elif not address_for(transaction, channel):
            reasons.append(f"no address for {name}")
        else:
            reasons.append(f"{name} undeliverable")
    audit.record(
        session,
        Actor.system(attempt.organization_id),
        "recovery.sending_stopped",
        transaction_id=attempt.transaction_id,
        target_type="recovery_attempt",
        target_id=attempt.id,
        summary=f"No more messages: {'; '.join(reasons)}. The payment link works until it expires.",
    )
    log.info(
        "recovery_sending_stopped",
        attempt_id=attempt.id,
        organization_id=attempt.organization_id,
        reasons=reasons,
    )
