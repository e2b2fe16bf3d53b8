"""Claiming a send: the due attempts locked, each re-checked, and the messages its step still owes.

A claim is a message marked `sending` with its `tries` counted up, its unique
key (attempt, step, channel) stored before any provider is called: so a job
that runs twice, or a second batch, sends nothing twice. `tries` is the
claim's fence: a run only hands off and records a message whose `tries` is
still the one it claimed (docs/fault-model.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, text, tuple_
from sqlalchemy.orm import object_session, selectinload

from recovery.campaigns import ending
from recovery.messaging.contacts import effective_channels
from recovery.models import (
    AttemptStatus,
    Message,
    MessageStatus,
    Organization,
    RecoveryAttempt,
    TransactionStatus,
    utcnow,
)
from recovery.models.base import DbSession, insert_ignoring_duplicates
from recovery.recoveries.lifecycle import PAID, close_attempt
from recovery.recoveries.messages import Outgoing, new_message, outgoing
from recovery.recoveries.schedule import send_time

A = AttemptStatus
M = MessageStatus

# Tries of one message before the step moves on without it.
MAX_TRIES = 5
# How often a step held back by a payment still settling at Stripe (SEPA, ACH) looks
# again: a failed debit takes days to be known, so a few hours more before the
# reminders resume costs little, and spares the queue a job every few minutes.
PAYMENT_PENDING_RECHECK = timedelta(hours=6)
# What the due scan selects on: exactly the predicate of the partial index
# ix_recovery_attempt_due, written out so that PostgreSQL can use the index.
DUE_STATUSES = text("recovery_attempt.status IN ('scheduled', 'notified', 'clicked')")

# Claims of a batch, by attempt id: the attempt and its claimed messages.
Claims = dict[int, tuple[RecoveryAttempt, list[Message]]]


def due_attempts(session: DbSession, now: datetime, limit: int = 500) -> list[tuple[int, int, datetime]]:
    """(id, step, next_send_at) of active attempts whose next send is due, oldest first.

    Served by the partial index ix_recovery_attempt_due: it holds only active
    attempts, so the scan stays short however many finished ones there are.
    """
    rows = session.execute(
        select(RecoveryAttempt.id, RecoveryAttempt.step, RecoveryAttempt.next_send_at)
        .where(DUE_STATUSES, RecoveryAttempt.next_send_at <= now)
        .order_by(RecoveryAttempt.next_send_at)
        .limit(limit)
    )
    return [(row_id, step, due) for row_id, step, due in rows if due is not None]


def fill_batch(
    session: DbSession, now: datetime, limit: int, *, exclude: Sequence[int] = ()
) -> list[RecoveryAttempt]:
    """Lock up to `limit` due attempts that no other job is sending, to fill a batch.

    FOR UPDATE SKIP LOCKED never waits: an attempt another batch holds is left
    to it, and so is one with a message of its step in flight (claimed and
    committed, not yet recorded), so concurrent batches take disjoint sends.
    SQLite has no row locks; its writers take turns anyway.
    """
    if limit <= 0:
        return []
    in_flight = (
        select(Message.id)
        .where(
            Message.attempt_id == RecoveryAttempt.id,
            Message.step == RecoveryAttempt.step,
            Message.status == M.SENDING,
        )
        .exists()
    )
    query = select(RecoveryAttempt).where(DUE_STATUSES, RecoveryAttempt.next_send_at <= now, ~in_flight)
    if exclude:
        query = query.where(RecoveryAttempt.id.not_in(list(exclude)))
    return list(
        session.scalars(
            query.order_by(RecoveryAttempt.next_send_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=RecoveryAttempt)
            .options(selectinload(RecoveryAttempt.transaction))
            .execution_options(populate_existing=True)
        )
    )


def lock_attempt(session: DbSession, attempt_id: int) -> RecoveryAttempt | None:
    # FOR UPDATE (PostgreSQL): concurrent jobs for one attempt take turns
    # deciding; SQLite serialises writers anyway and ignores it.
    return session.scalar(
        select(RecoveryAttempt)
        .where(RecoveryAttempt.id == attempt_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def messages_at_steps(session: DbSession, attempts: Sequence[RecoveryAttempt]) -> dict[int, list[Message]]:
    """The messages of each attempt's current step, read afresh and locked: one query for a whole batch.

    Keep the lists while using the messages: the session's identity map holds
    its objects weakly, and `session.get` of a collected one queries again.
    """
    found: dict[int, list[Message]] = {attempt.id: [] for attempt in attempts}
    if not found:
        return found
    pairs = [(attempt.id, attempt.step) for attempt in attempts]
    for message in session.scalars(
        select(Message)
        .where(tuple_(Message.attempt_id, Message.step).in_(pairs))
        .order_by(Message.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ):
        found[message.attempt_id].append(message)
    return found


def lock_with_step_messages(session: DbSession, attempt_id: int) -> tuple[RecoveryAttempt, list[Message]]:
    """The attempt and the messages of its current step, read afresh and locked: one query.

    After a batch's claims there is at least one message at the step; if the
    step moved on meanwhile (another run), the two-query form reads it as it is.
    """
    rows = session.execute(
        select(RecoveryAttempt, Message)
        .join(Message, (Message.attempt_id == RecoveryAttempt.id) & (Message.step == RecoveryAttempt.step))
        .where(RecoveryAttempt.id == attempt_id)
        .order_by(Message.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    if rows:
        return rows[0][0], [message for _, message in rows]
    attempt = lock_attempt(session, attempt_id)
    assert attempt is not None  # attempts are never deleted
    return attempt, messages_at_steps(session, [attempt])[attempt_id]


def stop_reason(attempt: RecoveryAttempt, step: int, now: datetime, *, is_paid_at_stripe: bool) -> str | None:
    """Why nothing may be sent now, ending the attempt where its time is up or it was paid.

    `is_paid_at_stripe`: the transaction has a `paid_session` that Stripe's webhook
    has not turned into a recovery yet.
    """
    if not attempt.is_active:
        return "inactive"
    if attempt.step != step:
        return "stale"
    if attempt.next_send_at is None or attempt.next_send_at > now:
        return "not_due"
    transaction = attempt.transaction
    if transaction.status in PAID:
        close_attempt(attempt, A.COMPLETED, now)
        return "paid"
    if transaction.status == TransactionStatus.CANCELLED:
        close_attempt(attempt, A.CANCELLED, now)
        return "cancelled"
    if now >= attempt.expires_at:
        if attempt.step >= attempt.step_count:
            close_attempt(attempt, A.EXHAUSTED, now)
            ending.after_exhausted(object_session(attempt), attempt, now=now)  # type: ignore[arg-type]
        else:
            close_attempt(attempt, A.EXPIRED, now)
        return "ended"
    if is_paid_at_stripe:
        # The pay page already tells this customer "paid, confirming": a reminder that the
        # payment is still open would contradict it. Not closed: a delayed debit may still
        # fail, and then the reminders resume at a later check.
        attempt.next_send_at = min(now + PAYMENT_PENDING_RECHECK, attempt.expires_at)
        return "payment_pending"
    if not attempt.is_message_step:
        return None  # a card retry or a staff alert: the customer's quiet hours do not apply
    # The due time may have been set days ago, before a change of settings or of the
    # customer's country: the hour is checked again now. Deferred, not skipped.
    organization = object_session(attempt).get(Organization, attempt.organization_id)  # type: ignore[union-attr]
    if organization is not None:
        allowed = send_time(organization, transaction, now)
        if allowed > now:
            attempt.next_send_at = allowed
            return "quiet_hours"
    return None


def claim(
    session: DbSession,
    attempt: RecoveryAttempt,
    existing: Sequence[Message],
    suppressed: dict[str, str],
    base_url: str,
    now: datetime,
) -> list[Message]:
    """The messages this step still owes, each marked sending; new ones are not stored yet (`store_claims`).

    `existing` are the step's messages, locked. One that exists was sent, is
    being sent by another job, is unknown, or failed for good: it is not
    claimed again. One that failed transiently (or whose claim a stopped run
    never handed off: `repair.repair_abandoned`) is claimed for another try.
    Each claim adds one to `tries`, which is the claim's fence: a run only
    hands off and records a message whose `tries` is still the one it claimed.
    """
    transaction = attempt.transaction
    by_channel = {message.channel: message for message in existing}
    claimed: list[Message] = []
    for channel in effective_channels(session, attempt, transaction, suppressed):
        message = by_channel.get(channel)
        if message is None:
            claimed.append(new_message(session, attempt, channel, base_url, now))
        elif message.status == M.FAILED and message.tries < MAX_TRIES:
            message.transition(M.SENDING)
            message.tries += 1
            message.handed_off_at = None
            message.updated_at = utcnow()  # the claim's time, for CLAIM_ABANDONED
            claimed.append(message)
    return claimed


# What a new claim stores: the unique key (attempt, step, channel) and the rendered message.
_CLAIM_COLUMNS = (
    "organization_id",
    "attempt_id",
    "transaction_id",
    "step",
    "channel",
    "recipient",
    "subject",
    "body_text",
    "body_html",
    "status",
    "tries",
    "created_at",
    "updated_at",
)


def store_claims(session: DbSession, claims: Claims, base_url: str) -> dict[int, list[Outgoing]]:
    """Insert the new claims in one statement and return every claim ready to send, by attempt id.

    ON CONFLICT DO NOTHING on the unique key: a message another run of this
    job claimed first is left to it, as a savepoint per message would, in one
    round trip for the batch.
    """
    new = [message for _, messages in claims.values() for message in messages if message.id is None]
    if new:
        stored = session.execute(
            insert_ignoring_duplicates(session, Message, ("attempt_id", "step", "channel"))
            .values([{column: getattr(message, column) for column in _CLAIM_COLUMNS} for message in new])
            .returning(Message.id, Message.attempt_id, Message.channel)
        )
        ids = {(attempt_id, channel): message_id for message_id, attempt_id, channel in stored}
        for message in new:
            message.id = ids.get((message.attempt_id, message.channel))  # type: ignore[assignment]
    ready: dict[int, list[Outgoing]] = {}
    for attempt_id, (attempt, messages) in claims.items():
        organization = session.get(Organization, attempt.organization_id)
        assert organization is not None
        items = [outgoing(m, organization, base_url, attempt.token) for m in messages if m.id is not None]
        if items:
            ready[attempt_id] = items
    return ready
