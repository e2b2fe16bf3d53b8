"""What a send that stopped half-way left behind, put right; and unknown messages, looked up or sent again.

A send batch commits each message's claim, then its hand-off just before the
provider call, then the provider's answer (sending.send_batch). A worker
killed in between (SIGKILL, OOM, a lost machine) leaves messages `sending`:

- claimed, never handed off (`handed_off_at` empty): the provider never saw
  it. Once CLAIM_ABANDONED has passed it is failed with a note and its step
  is due again at once, so the next send job claims it for another try.
- handed off, never answered: the provider may have it. Once
  HANDOFF_ABANDONED has passed it becomes `unknown` (never `sent`): for a text
  Twilio's message list is asked (`look_up_sms`); an SMTP server cannot be
  asked, so the email says which Message-ID to look for in the mail log. A
  staff member may send it again deliberately (`resend`).

The sweeper (jobs.sweep_once) runs `repair_abandoned` every minute.
docs/fault-model.md describes every crash point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_, select

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.messaging.contacts import BatchContacts, suppressed_channels
from recovery.messaging.providers import Postman
from recovery.models import (
    AttemptStatus,
    Channel,
    Message,
    MessageStatus,
    Organization,
    Provider,
    RecoveryAttempt,
    utcnow,
)
from recovery.models.base import DbSession
from recovery.models.message import DELIVERY_FAILED
from recovery.recoveries import scheduling
from recovery.recoveries.answers import record_answers
from recovery.recoveries.claims import MAX_TRIES, lock_attempt
from recovery.recoveries.handoff import BATCH_SENDING_SECONDS, CLAIM_ABANDONED, HANDOFF_ABANDONED, hand_off
from recovery.recoveries.messages import outgoing
from recovery.recoveries.refusals import RecoveryRefused
from recovery.unit_of_work import on_commit

log = get_logger("recovery.recoveries")

A = AttemptStatus
M = MessageStatus

# Abandoned claims one sweep settles; the rest wait for the next minute's.
REPAIR_LIMIT = 500

NEVER_HANDED_OFF = "Not sent: the worker stopped before handing it to the provider. Sent again."
RESEND_NEVER_HANDED_OFF = "The resend did not happen: the worker stopped before handing it to the provider."
UNKNOWN_EMAIL = (
    "Unknown — check the provider: the worker stopped while the mail server had this email, so it may"
    " or may not have been accepted, and SMTP gives no way to ask afterwards. Look for Message-ID"
    " <recovery-message-{id}@…> in the mail server's log; send it again from here if it is not there."
)
UNKNOWN_SMS = (
    "Unknown — check the provider: the worker stopped while Twilio had this text, so it may or may not"
    " have been sent. Looking for it in Twilio's message list."
)
SMS_NOT_FOUND = (
    "Unknown — check the provider: the worker stopped while Twilio had this text. Twilio's message list"
    " had no such text at {at:%Y-%m-%d %H:%M} UTC, so it most likely never left; send it again from here"
    " if the customer should have it."
)
SMS_LOOKUP_FAILED = (
    "Unknown — check the provider: the worker stopped while Twilio had this text, and Twilio's message"
    " list could not be read ({error}). Check the Twilio console; send it again from here if it is not there."
)


@dataclass(frozen=True)
class Repaired:
    """What a repair did; the caller commits, then places the sends and the look-ups."""

    # Messages failed because their claim was never handed off (tried again shortly).
    reclaimed: list[int] = field(default_factory=list)
    # Messages whose hand-off got no answer: now unknown.
    unknown: list[int] = field(default_factory=list)
    # (message id, tries) of the texts among them, to look up at Twilio after the commit.
    to_look_up: list[tuple[int, int]] = field(default_factory=list)


def _abandoned(now: datetime) -> ColumnElement[bool]:
    return and_(
        Message.status == M.SENDING,
        or_(
            and_(Message.handed_off_at.is_(None), Message.updated_at < now - CLAIM_ABANDONED),
            Message.handed_off_at < now - HANDOFF_ABANDONED,
        ),
    )


def repair_abandoned(session: DbSession, now: datetime, *, limit: int = REPAIR_LIMIT) -> Repaired:
    """Settle the claims of sends that stopped: fail those never handed off, make the others unknown.

    An attempt whose current step had such a message is due again now (a new
    send job id: the dead run's job may still stand in RQ as started), so the
    step goes on within the minute. Safe to run twice and beside live batches:
    each message is re-checked under its attempt's lock, and a live batch's
    claims are younger than both limits.
    """
    attempt_ids = sorted(
        set(
            session.scalars(
                select(Message.attempt_id).where(_abandoned(now)).order_by(Message.id).limit(limit)
            )
        )
    )
    repaired = Repaired()
    for attempt_id in attempt_ids:
        attempt = lock_attempt(session, attempt_id)
        assert attempt is not None  # attempts are never deleted
        messages = session.scalars(
            select(Message)
            .where(Message.attempt_id == attempt_id, _abandoned(now))
            .order_by(Message.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
        current = False
        for message in messages:
            current = current or message.step == attempt.step
            if message.handed_off_at is None:
                _never_handed_off(message, attempt)
                repaired.reclaimed.append(message.id)
            elif message.channel == Channel.SMS and message.delivery_status and message.provider_id:
                # Twilio reported on it while its worker was dying: it went out.
                message.transition(M.UNKNOWN)
                mark_found(message, attempt, provider_id=message.provider_id, status=message.delivery_status)
            else:
                message.transition(M.UNKNOWN)
                text = UNKNOWN_EMAIL if message.channel == Channel.EMAIL else UNKNOWN_SMS
                message.error = text.format(id=message.id)
                repaired.unknown.append(message.id)
                if message.channel == Channel.SMS:
                    repaired.to_look_up.append((message.id, message.tries))
            log.warning(
                "recovery_message_abandoned",
                message_id=message.id,
                attempt_id=attempt_id,
                channel=message.channel,
                status=message.status,
                handed_off=message.handed_off_at is not None,
            )
        if current and attempt.is_active:
            # Due again now: the step's claims are settled, so it can finish or retry.
            attempt.next_send_at = now
    return repaired


def _never_handed_off(message: Message, attempt: RecoveryAttempt) -> None:
    if message.step == attempt.step or not attempt.is_active:
        # `tries` stays: it fences the dead run's claim (claims.claim).
        message.transition(M.FAILED)
        message.error = NEVER_HANDED_OFF if attempt.is_active else None
    else:
        # A staff member's resend of an unknown message (only those are claimed
        # at a past step): its fate is as unknown as before the resend.
        message.transition(M.UNKNOWN)
        message.error = RESEND_NEVER_HANDED_OFF


# --- unknown texts, looked up at Twilio ----------------------------------------------


def look_up_sms(session: DbSession, postman: Postman, message_id: int, now: datetime) -> str:
    """Ask Twilio whether an unknown text went out; record what it says. Returns the outcome.

    "found": Twilio has it (sent, with Twilio's id); "not_found" and
    "failed" leave it unknown with what was learnt. No lock is held while
    Twilio answers; the message is re-checked after.
    """
    message = session.get(Message, message_id)
    if message is None or message.status != M.UNKNOWN or message.channel != Channel.SMS:
        session.rollback()
        return "skipped"
    to, body, since = message.recipient, message.body_text, message.handed_off_at or message.updated_at
    session.rollback()
    try:
        found = postman.find_sms(to=to, body=body, since=since)
    except Exception as error:  # any failure to read the list leaves the message unknown, said so
        log.warning("recovery_sms_lookup_failed", message_id=message_id, error=str(error))
        outcome, found = "failed", None
        note = SMS_LOOKUP_FAILED.format(error=f"{type(error).__name__}: {error}"[:200])
    else:
        outcome = "found" if found is not None else "not_found"
        note = SMS_NOT_FOUND.format(at=now)
    message = session.get(Message, message_id, with_for_update=True, populate_existing=True)
    if message is None or message.status != M.UNKNOWN:
        session.rollback()
        return "skipped"  # settled meanwhile (a delivery report, a resend)
    if found is None:
        message.error = note
    else:
        attempt = lock_attempt(session, message.attempt_id)
        assert attempt is not None
        mark_found(message, attempt, provider_id=found.sid, status=found.status)
        audit.record(
            session,
            Actor.system(message.organization_id, "Twilio"),
            "recovery.message_found",
            transaction_id=message.transaction_id,
            target_type="message",
            target_id=message.id,
            provider_id=found.sid,
        )
    log.info("recovery_sms_looked_up", message_id=message_id, outcome=outcome)
    return outcome


def mark_found(message: Message, attempt: RecoveryAttempt, *, provider_id: str, status: str) -> None:
    """An unknown text that Twilio turns out to have: sent (or delivered), with Twilio's id.

    For the look-up and for a delivery report that names it (recoveries.delivery_reports).
    """
    message.provider = Provider.TWILIO
    message.provider_id = provider_id
    message.sent_at = message.handed_off_at
    message.error = None
    if status in DELIVERY_FAILED:
        message.transition(M.FAILED)
        message.tries = MAX_TRIES  # failed after the provider took it: never re-sent
        message.error = f"Twilio: {status}"
        return
    message.transition(M.DELIVERED if status == "delivered" else M.SENT)
    attempt.messages_sent += 1
    if attempt.status == A.SCHEDULED:
        attempt.transition(A.NOTIFIED)


# --- sending again, by a staff member's choice -------------------------------------------


@dataclass(frozen=True)
class ResendQueued:
    """A resend claimed; `jobs.resend_message(message_id, tries)` is placed once it commits."""

    message_id: int
    tries: int


def resend(session: DbSession, message: Message, actor: Actor, now: datetime) -> ResendQueued:
    """Claim an unknown message (or a failed one the schedule no longer retries) to be sent again.

    A deliberate choice: the customer may get it twice. Refused when the
    recovery has ended (paid, cancelled, expired) or the address may no
    longer be used.
    """
    attempt = lock_attempt(session, message.attempt_id)
    assert attempt is not None
    session.refresh(message, with_for_update=True)
    behind = message.step < attempt.step or message.tries >= MAX_TRIES
    if not (message.status == M.UNKNOWN or (message.status == M.FAILED and behind)):
        raise RecoveryRefused(
            "Only a message whose fate is unknown, or that failed for good, can be sent again."
        )
    if not attempt.is_active:
        raise RecoveryRefused("This recovery has ended; start a new one to contact the customer.", status=409)
    if message.channel in suppressed_channels(session, attempt.transaction):
        raise RecoveryRefused("The customer can no longer be reached at this address.", status=409)
    message.transition(M.SENDING)
    message.tries += 1
    message.handed_off_at = None
    message.error = None
    message.updated_at = now
    audit.record(
        session,
        actor,
        "recovery.message_resent",
        transaction_id=message.transaction_id,
        target_type="message",
        target_id=message.id,
        channel=message.channel,
    )
    on_commit(session, scheduling.queue_resend, message.id, message.tries)
    return ResendQueued(message.id, message.tries)


def send_claimed(session: DbSession, postman: Postman, message_id: int, tries: int, *, base_url: str) -> str:
    """Send one claimed message (a staff member's resend): hand-off (committed), delivery, answer.

    "lost" if the claim is no longer this job's (sent already by an earlier
    run of it, or settled by `repair_abandoned`).
    """
    message = session.get(Message, message_id)
    if message is None or message.status != M.SENDING or message.tries != tries or message.handed_off_at:
        session.rollback()
        return "lost"
    attempt = session.get(RecoveryAttempt, message.attempt_id)
    organization = session.get(Organization, message.organization_id)
    assert attempt is not None and organization is not None
    item = outgoing(message, organization, base_url, attempt.token)
    with postman.session():
        delivery = hand_off(session, postman, item, tries, time.monotonic() + BATCH_SENDING_SECONDS)
    if delivery is None:
        return "lost"
    attempt = lock_attempt(session, message.attempt_id)
    assert attempt is not None
    contacts = BatchContacts(session, [attempt.transaction])
    record_answers(session, attempt, [(message_id, tries, delivery)], utcnow(), contacts)
    return delivery.outcome
