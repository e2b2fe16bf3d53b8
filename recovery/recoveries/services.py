"""Recoveries: start, cancel, and send each step of an attempt's schedule.

Plain functions over a SQLAlchemy session; no request globals. `start_recovery`
and `cancel_recovery` leave the commit to the caller, who enqueues or removes
jobs only after it. `send_batch` is the exception, on purpose: it commits the
message's unique key (attempt, step, channel) *before* calling the provider,
so that a job that runs twice, or is retried after a crash, sends once; and it
commits each message's hand-off to its provider before the call, so that after
a crash the messages that never left are told apart from the one that may have
(recovery/recoveries/repair.py, docs/fault-model.md).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise

from sqlalchemy import ColumnElement, exists, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import object_session, selectinload

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.messaging.content import MessageFacts, render_email, render_sms
from recovery.messaging.providers import Delivery, Outcome, OutgoingEmail, OutgoingSms, Postman
from recovery.models import (
    AttemptStatus,
    Channel,
    CheckoutSession,
    CheckoutStatus,
    ContactSuppression,
    Message,
    MessageStatus,
    Organization,
    Provider,
    RecoveryAttempt,
    SuppressionReason,
    Transaction,
    TransactionStatus,
    WebhookEvent,
    utcnow,
)
from recovery.models.base import DbSession, commit_keeping_state, insert_ignoring_duplicates
from recovery.models.message import DELIVERY_FAILED
from recovery.money import card_charge_problem
from recovery.payments import services as payments
from recovery.payments.gateway import StripeGateway
from recovery.recoveries.quiet_hours import allowed_at
from recovery.recoveries.scheduling import send_job_id

log = get_logger("recovery.recoveries")

A = AttemptStatus
M = MessageStatus

# Tries of one message before the step moves on without it; the delays between them.
MAX_TRIES = 5
RETRY_DELAYS = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1))
MAX_STEPS = 10
# How often a step held back by a payment still settling at Stripe (SEPA, ACH) looks
# again: a failed debit takes days to be known, so a few hours more before the
# reminders resume costs little, and spares the queue a job every few minutes.
PAYMENT_PENDING_RECHECK = timedelta(hours=6)
# The most a step overdue after a backlog waits after the previous send (`_next_send_time`).
MAX_CATCH_UP_GAP = timedelta(days=1)
# A batch starts no new delivery after this long; the rest are retried a minute later.
BATCH_SENDING_SECONDS = 60
# A claim still not handed to its provider this long after it was made belongs to a run
# that stopped (a live batch starts no hand-off after BATCH_SENDING_SECONDS): the message
# never left, and is sent again.
CLAIM_ABANDONED = timedelta(seconds=BATCH_SENDING_SECONDS + 60)
# A hand-off still unanswered this long after it began lost its worker during the
# provider call: the provider may have the message, so it is reported as unknown.
# Longer than a send job may live (recovery.recoveries.jobs.SEND_JOB_TIMEOUT).
HANDOFF_ABANDONED = timedelta(minutes=10)
MAX_SCHEDULE_DAY = 60
# What the due scan selects on: exactly the predicate of the partial index
# ix_recovery_attempt_due, written out so that PostgreSQL can use the index.
DUE_STATUSES = text("recovery_attempt.status IN ('scheduled', 'notified', 'clicked')")
PAID = frozenset({TransactionStatus.RECOVERED, TransactionStatus.REFUNDED})


class RecoveryRefused(Exception):
    """A recovery cannot be started or changed as asked; `field` names the input at fault."""

    def __init__(self, message: str, *, status: int = 422, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field


class AlreadyActive(RecoveryRefused):
    """The transaction already has an active attempt; only one at a time."""

    def __init__(self, attempt_id: int | None) -> None:
        super().__init__(
            "A recovery is already running for this transaction; cancel it before starting another.",
            status=409,
        )
        self.attempt_id = attempt_id


@dataclass(frozen=True)
class RecoveryStarted:
    attempt: RecoveryAttempt


@dataclass(frozen=True)
class RecoveryCancelled:
    attempt: RecoveryAttempt
    # The send job that was waiting, to be removed from the queue after the commit.
    pending_job_id: str | None


@dataclass(frozen=True)
class SendResult:
    """What a send job did, and when the attempt's next send is due (None: nothing more)."""

    outcome: str
    attempt_id: int
    step: int
    next_send_at: datetime | None
    sent: int = 0
    channels: tuple[str, ...] = field(default=())


# --- contacts -----------------------------------------------------------------


def address_for(transaction: Transaction, channel: str) -> str | None:
    return transaction.customer_email if channel == Channel.EMAIL else transaction.customer_phone


def _other(channel: str) -> str:
    return Channel.SMS if channel == Channel.EMAIL else Channel.EMAIL


class BatchContacts:
    """Suppressed addresses of a batch's customers: read in one query, kept current as the batch adds some."""

    def __init__(self, session: DbSession, transactions: Sequence[Transaction]) -> None:
        wanted = {
            (t.organization_id, c, address)
            for t in transactions
            for c in (Channel.EMAIL, Channel.SMS)
            if (address := address_for(t, c))
        }
        self._reasons: dict[tuple[int, str, str], str] = {}
        if wanted:
            rows = session.execute(
                select(
                    ContactSuppression.organization_id,
                    ContactSuppression.channel,
                    ContactSuppression.address,
                    ContactSuppression.reason,
                ).where(
                    ContactSuppression.organization_id.in_({org for org, _, _ in wanted}),
                    ContactSuppression.address.in_({address for _, _, address in wanted}),
                )
            )
            self._reasons = {(org, c, a): reason for org, c, a, reason in rows if (org, c, a) in wanted}

    def suppressed(self, transaction: Transaction) -> dict[str, str]:
        """Channel → reason, as `suppressed_channels` would answer."""
        found: dict[str, str] = {}
        for channel in (Channel.EMAIL, Channel.SMS):
            address = address_for(transaction, channel)
            reason = self._reasons.get((transaction.organization_id, channel, address or ""))
            if address and reason:
                found[channel] = reason
        return found

    def add(self, organization_id: int, channel: str, address: str, reason: str) -> None:
        self._reasons.setdefault((organization_id, channel, address), reason)


def suppressed_channels(session: DbSession, transaction: Transaction) -> dict[str, str]:
    """Channel → reason, for the customer's addresses this organization may no longer use."""
    return BatchContacts(session, [transaction]).suppressed(transaction)


def available_channels(
    session: DbSession, transaction: Transaction, suppressed: dict[str, str] | None = None
) -> list[str]:
    """Channels the customer can be reached on: contact details present, not opted out or undeliverable."""
    if suppressed is None:
        suppressed = suppressed_channels(session, transaction)
    return [c for c in (Channel.EMAIL, Channel.SMS) if address_for(transaction, c) and c not in suppressed]


def effective_channels(
    session: DbSession,
    attempt: RecoveryAttempt,
    transaction: Transaction,
    suppressed: dict[str, str] | None = None,
) -> list[str]:
    """The channels the attempt sends on now: those asked for, a dead one replaced by the other if allowed.

    Allowed: the attempt allows fallback and the organization lets that channel fall back.
    An email address the customer unsubscribed is dropped, never replaced: the link
    they clicked says "Stop these reminders", not "text me instead". A number that
    replied STOP (Twilio 21610) falls back to email, as issue 5 asks: STOP is the
    carrier's keyword for texts, and says nothing about email.
    `suppressed` (channel → reason) saves the query when the caller knows it.
    """
    if suppressed is None:
        suppressed = suppressed_channels(session, transaction)
    usable = available_channels(session, transaction, suppressed)
    organization = session.get(Organization, attempt.organization_id)
    may_fall_back = organization.fallback_set if organization is not None else frozenset()
    result: list[str] = []
    for channel in attempt.channels:
        if channel in usable:
            chosen: str | None = channel
        elif (
            attempt.allow_fallback
            and channel in may_fall_back
            and not (channel == Channel.EMAIL and suppressed.get(channel) == SuppressionReason.OPTED_OUT)
            and _other(channel) in usable
        ):
            chosen = _other(channel)
        else:
            chosen = None
        if chosen and chosen not in result:
            result.append(chosen)
    return result


def suppress(
    session: DbSession,
    organization_id: int,
    channel: str,
    address: str,
    reason: str,
    *,
    detail: str | None = None,
    message_id: int | None = None,
) -> None:
    """Never message this address again in this organization (idempotent).

    One INSERT … ON CONFLICT DO NOTHING: a send batch and a Twilio callback
    suppressing the same address at once both succeed, and the first reason stays.
    """
    session.execute(
        insert_ignoring_duplicates(
            session, ContactSuppression, ("organization_id", "channel", "address")
        ).values(
            organization_id=organization_id,
            channel=channel,
            address=address,
            reason=reason,
            detail=(detail or "")[:500] or None,
            message_id=message_id,
        )
    )


# --- schedule -----------------------------------------------------------------


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


# --- start and cancel -------------------------------------------------------------


def active_attempt(session: DbSession, transaction_id: int) -> RecoveryAttempt | None:
    return session.scalar(
        select(RecoveryAttempt).where(
            RecoveryAttempt.transaction_id == transaction_id, RecoveryAttempt.status.in_(A.ACTIVE)
        )
    )


def _clean_channels(
    session: DbSession, transaction: Transaction, requested: Sequence[str] | None
) -> list[str]:
    suppressed = suppressed_channels(session, transaction)
    if requested is None:
        channels = available_channels(session, transaction)
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


def start_recovery(
    session: DbSession,
    transaction: Transaction,
    actor: Actor,
    *,
    now: datetime,
    channels: Sequence[str] | None = None,
    schedule: str | Sequence[object] | None = None,
    allow_fallback: bool | None = None,
) -> RecoveryStarted:
    """Create the transaction's recovery attempt and move it to recovering.

    `channels` None means every channel the customer can be reached on;
    `schedule` None means the organization's; `allow_fallback` None means
    yes if the organization lets any channel fall back. Raises RecoveryRefused
    (AlreadyActive if an attempt is running). The caller commits, then
    schedules the first send (recovery.recoveries.jobs.schedule_send).
    """
    organization = session.get(Organization, transaction.organization_id)
    assert organization is not None
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
    running = active_attempt(session, transaction.id)
    if running is not None:
        raise AlreadyActive(running.id)
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
    attempt.transition(A.SCHEDULED)
    try:
        with session.begin_nested():
            session.add(attempt)
            session.flush()
    except IntegrityError:
        # uq_recovery_attempt_active_transaction: someone started one a moment ago.
        raise AlreadyActive(None) from None
    transaction.transition(TransactionStatus.RECOVERING)
    audit.record(
        session,
        actor,
        "recovery.started",
        at=now,
        transaction_id=transaction.id,
        target_type="recovery_attempt",
        target_id=attempt.id,
        channels=chosen,
        schedule=attempt.schedule,
        expires_at=attempt.expires_at.isoformat(),
    )
    log.info(
        "recovery_started",
        attempt_id=attempt.id,
        transaction_ref=transaction.transaction_ref,
        organization_id=transaction.organization_id,
        channels=chosen,
        schedule=attempt.schedule,
    )
    return RecoveryStarted(attempt)


def _close(attempt: RecoveryAttempt, status: str, now: datetime) -> None:
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


# The timeline's words for a cancelled recovery; the Recovery card and the API docs say the same.
CANCELLED_SUMMARY = "the customer's link no longer works; the transaction stays open for a new recovery"


def cancel_recovery(
    session: DbSession, attempt: RecoveryAttempt, actor: Actor, *, now: datetime
) -> RecoveryCancelled:
    """Stop the attempt: nothing more is sent, whatever is already queued.

    Every send job re-reads the attempt before sending, so the cancel holds even
    for a job already in the queue; the caller removes the waiting job after
    the commit (`pending_job_id`) to keep the queue tidy.
    """
    if not attempt.is_active:
        raise RecoveryRefused(f"This recovery is already {attempt.status}.", status=409)
    pending = send_job_id(attempt.id, attempt.step, attempt.next_send_at) if attempt.next_send_at else None
    _close(attempt, A.CANCELLED, now)
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
    return RecoveryCancelled(attempt, pending)


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
    (`_finish`).
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


# --- finding attempts --------------------------------------------------------------


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


# --- paying ---------------------------------------------------------------------------

# A session about to lapse is no use to a customer who is about to pay.
CHECKOUT_MARGIN = timedelta(minutes=5)


def paid_session(session: DbSession, transaction_id: int) -> CheckoutSession | None:
    """The transaction's Checkout Session the customer has completed, if any, newest first.

    Stripe's webhook may not have recovered the transaction yet (it is queued,
    or Stripe is slow to send it), but the success page already saw the session
    complete: the customer has paid, and must not be offered a second session.
    A completed session awaiting a delayed payment method counts too, until
    Stripe reports that payment failed: then the customer may pay again.
    """
    return session.scalar(
        select(CheckoutSession)
        .where(CheckoutSession.transaction_id == transaction_id, _is_paid_session())
        .order_by(CheckoutSession.id.desc())
        .limit(1)
    )


def paid_at_stripe(session: DbSession, transaction_ids: Sequence[int]) -> set[int]:
    """Which of the transactions have a `paid_session`: one query for a whole send batch."""
    if not transaction_ids:
        return set()
    return set(
        session.scalars(
            select(CheckoutSession.transaction_id)
            .where(CheckoutSession.transaction_id.in_(set(transaction_ids)), _is_paid_session())
            .distinct()
        )
    )


def _is_paid_session() -> ColumnElement[bool]:
    """The condition of `paid_session`, shared so the send path and the pay page agree."""
    async_failed = exists().where(
        WebhookEvent.object_id == CheckoutSession.stripe_session_id,
        WebhookEvent.type == "checkout.session.async_payment_failed",
    )
    return (CheckoutSession.payment_status == "paid") | (
        (CheckoutSession.status == CheckoutStatus.COMPLETE) & ~async_failed
    )


def checkout_for_attempt(
    session: DbSession,
    gateway: StripeGateway,
    attempt: RecoveryAttempt,
    *,
    base_url: str,
    expires_in: timedelta,
    now: datetime,
) -> CheckoutSession:
    """The attempt's open Checkout Session, or a new one; raises PaymentRefused or StripeFailure.

    Safe to press twice: the n-th session of an attempt has the action key
    attempt:<id>:checkout:<n>, so a double submit gets the same session, and a
    new one is made only once the last has expired or is about to, and never
    once a session of the transaction is paid.
    """
    if paid_session(session, attempt.transaction_id) is not None:
        raise payments.PaymentRefused("This payment has been received; it is being confirmed.", status=409)
    sessions = list(
        session.scalars(
            select(CheckoutSession)
            .where(CheckoutSession.attempt_id == attempt.id)
            .order_by(CheckoutSession.id)
        )
    )
    latest = sessions[-1] if sessions else None
    if (
        latest is not None
        and latest.status == CheckoutStatus.OPEN
        and latest.url
        and latest.expires_at > now + CHECKOUT_MARGIN
    ):
        return latest
    # A reservation Stripe has not answered yet is finished under its own key.
    index = (
        len(sessions) - 1 if latest is not None and latest.status == CheckoutStatus.PENDING else len(sessions)
    )
    life = max(payments.CHECKOUT_MIN_LIFETIME, min(expires_in, attempt.expires_at - now))
    return payments.create_checkout_session(
        session,
        gateway,
        attempt.transaction,
        Actor.system(attempt.organization_id, "customer"),
        payments.CheckoutRequest(action=f"attempt:{attempt.id}:checkout:{index}", attempt_id=attempt.id),
        pages=payments.PaymentPages(base_url, token=attempt.token),
        expires_in=life,
    )


# --- sending ------------------------------------------------------------------------


def pay_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/pay/{token}"


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/pay/{token}/unsubscribe"


def _facts(
    organization: Organization, transaction: Transaction, attempt: RecoveryAttempt, base_url: str
) -> MessageFacts:
    return MessageFacts(
        merchant=organization.name,
        brand_color=organization.brand_color,
        customer_name=transaction.customer_name,
        amount=transaction.amount,
        currency=transaction.currency,
        transaction_ref=transaction.transaction_ref,
        failure_code=transaction.failure_code,
        link=pay_url(base_url, attempt.token),
        unsubscribe_url=unsubscribe_url(base_url, attempt.token),
        expires_at=attempt.expires_at,
        timezone=organization.timezone,
        country=transaction.customer_country,
        phone=transaction.customer_phone,
        locale=transaction.customer_locale,
        step=attempt.step,
        contact_email=organization.reply_to_email,
    )


Outgoing = OutgoingEmail | OutgoingSms


def outgoing(message: Message, organization: Organization, base_url: str, token: str) -> Outgoing:
    """The provider-ready form of a stored message (also what the outbox page shows)."""
    if message.channel == Channel.EMAIL:
        return OutgoingEmail(
            message_id=message.id,
            to=message.recipient,
            subject=message.subject or "",
            text=message.body_text,
            html=message.body_html or "",
            from_name=organization.email_from_name or organization.name,
            reply_to=organization.reply_to_email,
            unsubscribe_url=unsubscribe_url(base_url, token),
        )
    return OutgoingSms(message_id=message.id, to=message.recipient, body=message.body_text)


def lock_attempt(session: DbSession, attempt_id: int) -> RecoveryAttempt | None:
    # FOR UPDATE (PostgreSQL): concurrent jobs for one attempt take turns
    # deciding; SQLite serialises writers anyway and ignores it.
    return session.scalar(
        select(RecoveryAttempt)
        .where(RecoveryAttempt.id == attempt_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _messages_at_steps(session: DbSession, attempts: Sequence[RecoveryAttempt]) -> dict[int, list[Message]]:
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


def _lock_with_step_messages(session: DbSession, attempt_id: int) -> tuple[RecoveryAttempt, list[Message]]:
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
    return attempt, _messages_at_steps(session, [attempt])[attempt_id]


def send_time(organization: Organization, transaction: Transaction, at: datetime) -> datetime:
    """`at`, or the end of the customer's quiet hours if `at` falls inside them."""
    return allowed_at(
        at,
        country=transaction.customer_country,
        phone=transaction.customer_phone,
        organization_zone=organization.timezone,
        quiet_hours=organization.quiet_hours,
    )


def _stop_reason(
    attempt: RecoveryAttempt, step: int, now: datetime, *, is_paid_at_stripe: bool
) -> str | None:
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
        _close(attempt, A.COMPLETED, now)
        return "paid"
    if transaction.status == TransactionStatus.CANCELLED:
        _close(attempt, A.CANCELLED, now)
        return "cancelled"
    if now >= attempt.expires_at:
        _close(attempt, A.EXHAUSTED if attempt.step >= len(attempt.schedule_days) else A.EXPIRED, now)
        return "ended"
    if is_paid_at_stripe:
        # The pay page already tells this customer "paid, confirming": a reminder that the
        # payment is still open would contradict it. Not closed: a delayed debit may still
        # fail, and then the reminders resume at a later check.
        attempt.next_send_at = min(now + PAYMENT_PENDING_RECHECK, attempt.expires_at)
        return "payment_pending"
    # The due time may have been set days ago, before a change of settings or of the
    # customer's country: the hour is checked again now. Deferred, not skipped.
    organization = object_session(attempt).get(Organization, attempt.organization_id)  # type: ignore[union-attr]
    if organization is not None:
        allowed = send_time(organization, transaction, now)
        if allowed > now:
            attempt.next_send_at = allowed
            return "quiet_hours"
    return None


def _claim(
    session: DbSession,
    attempt: RecoveryAttempt,
    existing: Sequence[Message],
    suppressed: dict[str, str],
    base_url: str,
    now: datetime,
) -> list[Message]:
    """The messages this step still owes, each marked sending; new ones are not stored yet (`_store_claims`).

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
            claimed.append(_new_message(session, attempt, channel, base_url, now))
        elif message.status == M.FAILED and message.tries < MAX_TRIES:
            message.transition(M.SENDING)
            message.tries += 1
            message.handed_off_at = None
            message.updated_at = utcnow()  # the claim's time, for CLAIM_ABANDONED
            claimed.append(message)
    return claimed


def _new_message(
    session: DbSession, attempt: RecoveryAttempt, channel: str, base_url: str, now: datetime
) -> Message:
    """A rendered message for the attempt's step, claimed (sending, first try); transient until stored."""
    transaction = attempt.transaction
    organization = session.get(Organization, attempt.organization_id)
    assert organization is not None
    message = Message(
        organization_id=attempt.organization_id,
        attempt_id=attempt.id,
        transaction_id=attempt.transaction_id,
        step=attempt.step,
        channel=channel,
        recipient=address_for(transaction, channel) or "",
        status=M.QUEUED,
        tries=0,
        created_at=now,
        # The claim's own time: CLAIM_ABANDONED is measured from it, not from the batch's start.
        updated_at=utcnow(),
    )
    facts = _facts(organization, transaction, attempt, base_url)
    if channel == Channel.EMAIL:
        email = render_email(facts)
        message.subject, message.body_text, message.body_html = email.subject, email.text, email.html
    else:
        message.body_text = render_sms(facts)
    message.transition(M.SENDING)
    message.tries = 1
    return message


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


def _store_claims(
    session: DbSession, claims: dict[int, tuple[RecoveryAttempt, list[Message]]], base_url: str
) -> dict[int, list[Outgoing]]:
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


def _record_locked(
    session: DbSession,
    attempt_id: int,
    answers: list[tuple[int, int, Delivery]],
    now: datetime,
    contacts: BatchContacts,
) -> bool:
    """`record_answers` under the attempt's lock (taken here); the caller's next commit releases it."""
    attempt = lock_attempt(session, attempt_id)
    assert attempt is not None  # attempts are never deleted
    return record_answers(session, attempt, answers, now, contacts)


def _deliver(postman: Postman, item: Outgoing) -> Delivery:
    if isinstance(item, OutgoingEmail):
        return postman.send_email(item)
    return postman.send_sms(item)


def record_answers(
    session: DbSession,
    attempt: RecoveryAttempt,
    results: list[tuple[int, int, Delivery]],
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
            dead = True
        else:
            message.transition(M.FAILED)
            message.tries = MAX_TRIES  # a permanent refusal: no further try
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


def _finish(
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
    if not effective_channels(session, attempt, attempt.transaction, suppressed):
        if not attempt.messages_sent:
            # No message ever reached the customer: nobody holds the link, so the
            # attempt has failed, and staff may fix the contact details and start again.
            _close(attempt, A.FAILED, now)
            return SendResult("no_channel", attempt.id, step, None, sent)
        # The customer has a link from an earlier message, and may still pay with it
        # (the unsubscribe page says so): stop messaging, keep the link.
        _send_no_more(attempt)
        _record_sending_stopped(session, attempt, suppressed)
        return SendResult("no_channel", attempt.id, attempt.step, attempt.next_send_at, sent)
    days = attempt.schedule_days
    attempt.step = step + 1
    if attempt.step < len(days):
        organization = session.get(Organization, attempt.organization_id)
        assert organization is not None
        due = _next_send_time(organization, attempt, sent_at=now)
        if due < attempt.expires_at:
            attempt.next_send_at = due
            return SendResult("sent", attempt.id, attempt.step, due, sent)
        # A step that would come after the link expires does not happen.
    _send_no_more(attempt)
    return SendResult("sent", attempt.id, attempt.step, attempt.next_send_at, sent)


def _send_no_more(attempt: RecoveryAttempt) -> None:
    """End the attempt's schedule: the link stays valid until it expires, then the attempt is exhausted.

    `_stop_reason` does the closing, at the send due at the expiry.
    """
    attempt.step = len(attempt.schedule_days)
    attempt.next_send_at = attempt.expires_at


def _next_send_time(organization: Organization, attempt: RecoveryAttempt, *, sent_at: datetime) -> datetime:
    """When the attempt's (new) step goes out: its day in the schedule, but not too soon after `sent_at`.

    After a backlog (workers down, a Redis flush) several steps are overdue at
    once, and would otherwise reach the customer seconds apart. Each step waits
    at least half its planned gap after the previous send, and at most a day:
    half, so that ordinary lateness (quiet hours, a queue minutes behind) leaves
    the merchant's timetable exactly as planned; at most a day, so that a late
    schedule still fits before the link expires, at no more than one message a
    day (the densest the default schedule sends).
    """
    days = attempt.schedule_days
    planned = attempt.created_at + timedelta(days=days[attempt.step])
    gap = timedelta(days=days[attempt.step] - days[attempt.step - 1])
    earliest = sent_at + min(gap / 2, MAX_CATCH_UP_GAP)
    return send_time(organization, attempt.transaction, max(planned, earliest))


def _record_sending_stopped(session: DbSession, attempt: RecoveryAttempt, suppressed: dict[str, str]) -> None:
    """Put on the transaction's timeline why no more messages go out, though the link still works."""
    transaction = attempt.transaction
    reasons = []
    for channel in attempt.channels:
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


def _ended(attempt: RecoveryAttempt, outcome: str) -> SendResult:
    return SendResult(outcome, attempt.id, attempt.step, attempt.next_send_at if attempt.is_active else None)


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


@dataclass(frozen=True)
class BatchSent:
    """What a batch did: one result per attempt, the asked sends first."""

    results: list[SendResult]
    # (attempt id, step, due) of each send taken to fill the batch: a job
    # waiting to send it is redundant now (it would find nothing to do).
    taken: list[tuple[int, int, datetime]]
    # (message id, tries) of texts Twilio may or may not have taken: to look up in its list.
    unknown_sms: list[tuple[int, int]] = field(default_factory=list)


def _lost_claims(
    claims: dict[int, tuple[RecoveryAttempt, list[Message]]],
    stored: dict[int, list[Outgoing]],
    steps: dict[int, int],
) -> dict[int, SendResult]:
    """Attempts whose every claim another run stored first (SQLite, which has no row locks).

    That run sends them and finishes the step; this one leaves it alone.
    """
    return {
        attempt_id: SendResult("in_progress", attempt_id, steps[attempt_id], attempt.next_send_at)
        for attempt_id, (attempt, _) in claims.items()
        if attempt_id not in stored
    }


def hand_off(
    session: DbSession, postman: Postman, item: Outgoing, tries: int, deadline: float
) -> Delivery | None:
    """Hand one claimed message to its provider, the hand-off committed first; None if the claim was lost.

    The commit also carries what the batch recorded since the last one (the
    previous message's answer): a crash from here on leaves this message, and
    only it, handed off without an answer. Unless the batch's time is up: then
    it is not handed off and is retried shortly by a later job, which keeps a
    batch well inside its job's timeout however slow the provider.
    """
    if time.monotonic() > deadline:
        late = "Not sent: the batch ran out of time; tried again shortly."
        return Delivery(Outcome.RETRY, _provider_of(item), error=late)
    at = utcnow()
    marked = session.execute(
        update(Message)
        .where(
            Message.id == item.message_id,
            Message.status == M.SENDING,
            Message.tries == tries,
            Message.handed_off_at.is_(None),
        )
        .values(handed_off_at=at, updated_at=at)
        .execution_options(synchronize_session=False)
    )
    # Keeping the batch's loaded rows: the next answer is recorded without reading them again.
    commit_keeping_state(session)
    if marked.rowcount != 1:  # type: ignore[attr-defined]  # a DML result has a rowcount
        # A slow run whose claim `repair.repair_abandoned` gave to another: theirs now.
        log.warning("recovery_message_claim_lost", message_id=item.message_id)
        return None
    return _safe_deliver(postman, item)


def _safe_deliver(postman: Postman, item: Outgoing) -> Delivery:
    """Deliver one message of a batch; an unexpected error makes that message unknown, not the batch.

    Left unrecorded, the batch's other claimed messages would never go out.
    Not retried: the error may have come after the provider accepted the
    message, and a retry could duplicate it.
    """
    try:
        return _deliver(postman, item)
    except Exception as error:  # recorded on the message and logged with its traceback
        log.exception("recovery_message_error", message_id=item.message_id)
        text = f"Unknown — check the provider: {type(error).__name__}: {error}"[:300]
        return Delivery(Outcome.UNKNOWN, _provider_of(item), error=text)


def _provider_of(item: Outgoing) -> str:
    return Provider.SMTP if isinstance(item, OutgoingEmail) else Provider.TWILIO


def send_batch(
    session: DbSession,
    postman: Postman,
    sends: Sequence[tuple[int, int]],
    *,
    base_url: str,
    now: datetime,
    size: int = 1,
) -> BatchSent:
    """Send the asked (attempt id, step) sends, plus other due ones up to `size`, over one SMTP connection.

    Each message keeps the guarantees of a single send: its attempt is locked
    and re-checked (`_stop_reason`) right before it is claimed; its unique key
    (attempt, step, channel) is committed before any provider is called, so a
    batch that runs twice, or overlaps another, sends each message once; each
    provider answer is recorded on its own message (a transient failure is
    retried with backoff as for one send, and fails nobody else). The claims
    take one commit; then each message one more, made just before its
    provider call, which records its hand-off and the previous message's
    answer: a worker killed at any point leaves at most one message whose fate
    is unknown, and every other claim either answered or plainly never sent.
    """
    asked = sorted(set(sends))  # one lock order for every batch: no deadlock between them
    batch: list[tuple[RecoveryAttempt, int]] = []
    missing: list[SendResult] = []
    for attempt_id, step in asked:
        attempt = lock_attempt(session, attempt_id)
        if attempt is None:
            missing.append(SendResult("missing", attempt_id, step, None))
        else:
            batch.append((attempt, step))
    # Only now the others, without waiting: a batch waits for no lock while holding a filler's.
    fillers = fill_batch(session, now, size - len(asked), exclude=[a for a, _ in asked])
    taken = [(a.id, a.step, a.next_send_at) for a in fillers if a.next_send_at is not None]
    batch += [(attempt, attempt.step) for attempt in fillers]

    # Ids kept aside: after a commit, reading attempt.id would reload the row.
    order = [attempt.id for attempt, _ in batch]
    # Held for the batch: the identity map keeps objects weakly, and each
    # `session.get(Organization, ...)` of the checks would otherwise query.
    organizations = list(  # noqa: F841
        session.scalars(
            select(Organization).where(Organization.id.in_({a.organization_id for a, _ in batch}))
        )
    )
    steps = {attempt.id: step for attempt, step in batch}
    # Held for the batch too: each attempt is read again (locked) before its decision,
    # and its transaction is then found here instead of queried again.
    transactions = [attempt.transaction for attempt, _ in batch]
    contacts = BatchContacts(session, transactions)
    paid = paid_at_stripe(session, [attempt.transaction_id for attempt, _ in batch])
    at_step = _messages_at_steps(session, [attempt for attempt, _ in batch])
    results: dict[int, SendResult] = {}
    claims: dict[int, tuple[RecoveryAttempt, list[Message]]] = {}
    for attempt, step in batch:
        stop = _stop_reason(attempt, step, now, is_paid_at_stripe=attempt.transaction_id in paid)
        if stop is not None:
            results[attempt.id] = _ended(attempt, stop)
            continue
        suppressed = contacts.suppressed(attempt.transaction)
        claimed = _claim(session, attempt, at_step[attempt.id], suppressed, base_url, now)
        if claimed:
            claims[attempt.id] = (attempt, claimed)
        else:
            results[attempt.id] = _finish(session, attempt, step, now, at_step[attempt.id], suppressed)
    pending = _store_claims(session, claims, base_url)
    results |= _lost_claims(claims, pending, steps)
    # Each claim's fence: the `tries` it was claimed with (see `_claim`); read before the
    # commit expires the objects.
    tries = {message.id: message.tries for _, messages in claims.values() for message in messages}
    unknown_sms: list[tuple[int, int]] = []
    # Kept loaded (the transactions, organizations): each attempt's decision below
    # re-reads and locks what can change under it, the attempt and its messages.
    commit_keeping_state(session)

    deadline = time.monotonic() + BATCH_SENDING_SECONDS
    with postman.session():
        while pending:
            claims = {}
            for attempt_id in sorted(pending):
                # One message at a time: no lock is held while a provider talks, and
                # each answer is recorded (committed with the next hand-off) before
                # the next message leaves.
                answers: list[tuple[int, int, Delivery]] = []
                dead = False
                for item in pending[attempt_id]:
                    if answers:  # the attempt's other channel: its first answer goes in first
                        dead = _record_locked(session, attempt_id, answers, now, contacts) or dead
                        answers = []
                    delivery = hand_off(session, postman, item, tries[item.message_id], deadline)
                    if delivery is not None:
                        answers.append((item.message_id, tries[item.message_id], delivery))
                        if delivery.outcome == Outcome.UNKNOWN and isinstance(item, OutgoingSms):
                            unknown_sms.append((item.message_id, tries[item.message_id]))
                attempt, step_messages = _lock_with_step_messages(session, attempt_id)
                # Written in one UPDATE per row at the next commit, not flushed bit by bit.
                with session.no_autoflush:
                    dead = record_answers(session, attempt, answers, now, contacts) or dead
                    suppressed = contacts.suppressed(attempt.transaction)
                    # A dead address at this step: the other channel, if allowed, takes over at once.
                    if dead and attempt.is_active:
                        more = _claim(session, attempt, step_messages, suppressed, base_url, now)
                    else:
                        more = []
                    if more:
                        claims[attempt_id] = (attempt, more)
                    elif attempt.is_active:
                        step = steps[attempt_id]
                        results[attempt_id] = _finish(session, attempt, step, now, step_messages, suppressed)
                    else:
                        results[attempt_id] = SendResult("inactive", attempt_id, steps[attempt_id], None)
            pending = _store_claims(session, claims, base_url)
            tries |= {message.id: message.tries for _, messages in claims.values() for message in messages}
            results |= _lost_claims(claims, pending, steps)
            session.commit()
    ordered = missing + [results[attempt_id] for attempt_id in order]
    return BatchSent(ordered, taken, unknown_sms)


def send_due(
    session: DbSession, postman: Postman, attempt_id: int, step: int, *, base_url: str, now: datetime
) -> SendResult:
    """Send step `step` of the attempt if it is still due, and schedule what follows.

    A batch of one (see `send_batch` for the guarantees). Commits.
    """
    return send_batch(session, postman, [(attempt_id, step)], base_url=base_url, now=now).results[0]
