"""Stripe webhooks: process each stored event once in effect, replay, sweep, reconcile.

Plain functions over a SQLAlchemy session; callers (the RQ jobs, the admin
views) commit. Nothing here reads Flask's request globals. Receiving is in
receiving.py, the admin page's queries in events.py.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import select

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    CheckoutSession,
    CheckoutStatus,
    PaymentFulfilment,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    WebhookEvent,
    WebhookState,
    utcnow,
)
from recovery.models.base import DbSession
from recovery.payments import links
from recovery.payments.fulfilment import EventContradicts
from recovery.payments.gateway import StripeFailure, StripeGateway
from recovery.payments.rules import CLOSED_STATUSES
from recovery.payments.stripe_objects import CheckoutSessionInfo
from recovery.refusals import Refused
from recovery.unit_of_work import on_commit
from recovery.webhooks.context import RECONCILIATION_LABEL, Context
from recovery.webhooks.handlers import HANDLERS, session_object, session_paid

log = get_logger("recovery.webhooks")

GatewayFactory = Callable[[], StripeGateway | None]
DONE = frozenset({WebhookState.PROCESSED, WebhookState.IGNORED})


# --- processing --------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    stripe_event_id: str
    state: str  # the event's state after this run; "missing" if no such event
    ran: bool  # False: already done (a duplicate job), nothing was applied
    organization_id: int | None = None
    closed_transaction_id: int | None = None
    paid_session_id: str | None = None
    imported_transaction_id: int | None = None


class ProcessingFailed(Exception):
    """A handler raised: everything it did is to be rolled back, then the error recorded."""

    def __init__(self, stripe_event_id: str, organization_id: int | None, error: BaseException, tb: str):
        super().__init__(f"{type(error).__name__}: {error}")
        self.stripe_event_id = stripe_event_id
        self.organization_id = organization_id
        self.error = error
        self.traceback = tb


def process_event(
    session: DbSession,
    stripe_event_id: str,
    gateway_factory: GatewayFactory,
    *,
    skip_locked: bool = False,
    livemode: bool | None = None,
) -> Outcome:
    """Apply the stored event through its handler, in the caller's transaction.

    Safe to run twice or concurrently: the event row is locked (FOR UPDATE on
    PostgreSQL; SQLite serialises writers), so a second run waits and then finds
    it processed; with `skip_locked` it does not wait and answers "busy".
    `livemode`: the mode of our Stripe key, if known (see apply_event).
    Raises ProcessingFailed; the caller rolls back and calls record_failure.
    """
    event = session.scalar(
        select(WebhookEvent)
        .where(WebhookEvent.stripe_event_id == stripe_event_id)
        .with_for_update(skip_locked=skip_locked)
    )
    if event is None and skip_locked:
        return Outcome(stripe_event_id, "busy", ran=False)
    if event is None:
        log.warning("stripe_webhook_missing", event_id=stripe_event_id)
        return Outcome(stripe_event_id, "missing", ran=False)
    if event.status in DONE or event.status == WebhookState.UNMATCHED:
        return _already_applied(session, event)
    return apply_event(session, event, gateway_factory, livemode=livemode)


def apply_event(
    session: DbSession, event: WebhookEvent, gateway_factory: GatewayFactory, *, livemode: bool | None = None
) -> Outcome:
    """Apply a pending event that the caller has locked (process_event, or pending_events for a batch).

    An event of the other mode than our key's (`livemode`) is kept and ignored:
    Stripe sends connected accounts' test-mode events to a live endpoint too,
    and a merchant's test card must not become a customer to chase.
    """
    started = time.perf_counter()
    stripe_event_id = event.stripe_event_id
    ctx = Context(session, event, gateway_factory)
    handler = HANDLERS.get(event.type)
    error: str | None = None
    if livemode is not None and event.livemode != livemode:
        handler = None
        error = f"Ignored: a {'live' if event.livemode else 'test'}-mode event, and our Stripe key is not"
    try:
        # Unknown types are kept (the page shows them) and marked ignored.
        state = WebhookState.IGNORED if handler is None else handler(ctx, event.payload["data"]["object"])
    except EventContradicts as refusal:
        state, error = WebhookState.UNMATCHED, f"Refused: {refusal}"
        ctx.organization_id = None  # shown to neither organization's staff
        log.warning("stripe_webhook_refused", event_id=stripe_event_id, type=event.type, reason=str(refusal))
    except Exception as failure:
        raise ProcessingFailed(
            stripe_event_id, ctx.organization_id, failure, traceback.format_exc()
        ) from failure
    event.attempts += 1
    event.transition(state)
    event.organization_id = ctx.organization_id or event.organization_id
    event.processed_at = utcnow()
    event.last_error = error
    if error is None:
        event.last_traceback = None
    log.info(
        "stripe_webhook_processed",
        event_id=stripe_event_id,
        type=event.type,
        state=state,
        attempts=event.attempts,
        organization_id=event.organization_id,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        latency_ms=round((event.processed_at - event.received_at).total_seconds() * 1000, 1),
    )
    if state == WebhookState.UNMATCHED and error is None:
        log.warning(
            "stripe_webhook_unmatched", event_id=stripe_event_id, type=event.type, object_id=event.object_id
        )
    return Outcome(
        stripe_event_id,
        state,
        ran=True,
        organization_id=event.organization_id,
        closed_transaction_id=ctx.closed_transaction_id,
        paid_session_id=ctx.paid_session_id,
        imported_transaction_id=ctx.imported_transaction_id,
    )


def _already_applied(session: DbSession, event: WebhookEvent) -> Outcome:
    """The outcome of an event applied earlier, with the follow-ups it called for.

    A job runs again for an applied event when the queue lost the follow-ups
    after the commit that applied it (Redis failed, or the worker died, in
    between): RQ retries the job, and its follow-ups are read back from what
    the event left, so a recovered transaction's other ways to pay still get
    closed. Both follow-up jobs are safe to run twice.
    """
    outcome = Outcome(event.stripe_event_id, event.status, ran=False, organization_id=event.organization_id)
    if event.status != WebhookState.PROCESSED:
        return outcome
    fulfilled = session.execute(
        select(PaymentFulfilment.transaction_id, PaymentFulfilment.stripe_checkout_session_id).where(
            PaymentFulfilment.webhook_event_id == event.id
        )
    ).first()
    # An import links its "created" timeline entry to the event that made it.
    imported = session.scalar(
        select(AuditEvent.transaction_id).where(
            AuditEvent.webhook_event_id == event.id, AuditEvent.action == "transaction.created"
        )
    )
    return replace(
        outcome,
        closed_transaction_id=fulfilled.transaction_id if fulfilled else None,
        paid_session_id=fulfilled.stripe_checkout_session_id if fulfilled else None,
        imported_transaction_id=imported,
    )


def record_failure(session: DbSession, failure: ProcessingFailed) -> WebhookEvent | None:
    """Mark the event failed with its error and traceback, in a fresh transaction after the rollback."""
    event = session.scalar(
        select(WebhookEvent).where(WebhookEvent.stripe_event_id == failure.stripe_event_id).with_for_update()
    )
    if event is None or event.status not in (WebhookState.PENDING, WebhookState.FAILED):
        return event  # someone else finished it meanwhile
    event.attempts += 1
    event.transition(WebhookState.FAILED)
    event.organization_id = failure.organization_id or event.organization_id
    event.last_error = str(failure)[:2000]
    event.last_traceback = failure.traceback[-20000:]
    log.error(
        "stripe_webhook_failed",
        event_id=event.stripe_event_id,
        type=event.type,
        attempts=event.attempts,
        error=event.last_error,
    )
    return event


# --- replay and sweeping -----------------------------------------------------


class ReplayRefused(Refused):
    """Only failed or unmatched events can be processed again."""

    status = 409


def replay(session: DbSession, event: WebhookEvent, actor: Actor) -> None:
    """Put a failed or unmatched event back to pending; its processing job is queued once that commits."""
    # The jobs module imports this one: a job function is reached at call time.
    from recovery.webhooks.jobs import enqueue_processing

    if event.status not in (WebhookState.FAILED, WebhookState.UNMATCHED):
        raise ReplayRefused(
            f"This event is {event.status}; only failed or unmatched events can be processed again."
        )
    previous = event.status
    event.transition(WebhookState.PENDING)
    audit.record(
        session,
        actor,
        "webhook.replayed",
        target_type="webhook_event",
        target_id=event.stripe_event_id,
        type=event.type,
        previous_state=previous,
    )
    # If the queue is down, the event stays pending and the sweeper queues it within minutes.
    on_commit(session, enqueue_processing, event.stripe_event_id)
    log.info("stripe_webhook_replayed", event_id=event.stripe_event_id, type=event.type, by=actor.label)


def pending_events(session: DbSession, limit: int, *, exclude: str) -> list[WebhookEvent]:
    """Pending events, oldest first, locked for the caller's transaction: what a job takes along.

    SKIP LOCKED: two jobs taking events along at once take different ones,
    instead of both queueing on the same rows.
    """
    return list(
        session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.status == WebhookState.PENDING, WebhookEvent.stripe_event_id != exclude)
            .order_by(WebhookEvent.received_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


def stale_pending(session: DbSession, older_than: timedelta, limit: int = 1000) -> list[str]:
    """Ids of events stored but still pending after `older_than`: their job was never enqueued or lost."""
    cutoff = utcnow() - older_than
    return list(
        session.scalars(
            select(WebhookEvent.stripe_event_id)
            .where(WebhookEvent.status == WebhookState.PENDING, WebhookEvent.received_at < cutoff)
            .order_by(WebhookEvent.received_at)
            .limit(limit)
        )
    )


# --- after a recovery: close the other ways to pay ----------------------------


def close_payment_options(
    session: DbSession, gateway: StripeGateway, transaction_id: int, paid_session_id: str | None
) -> list[str]:
    """Deactivate the transaction's Payment Link and expire its other open sessions.

    For a transaction recovered (by a webhook or the reconciliation), or whose
    recovery staff cancelled: then nothing may be paid for it any more. One
    that is being recovered again by the time this runs is left alone.
    Safe to run twice: an inactive link is left alone, a session that is no
    longer open is only re-read. Runs after the commit that recovered or
    cancelled, so that a Stripe outage never holds either back.
    """
    txn = session.get(Transaction, transaction_id)
    # A cancelled recovery leaves the transaction open (failed), but what it offered the
    # customer goes with it; a transaction recovering again keeps what its new recovery offers.
    if txn is None or txn.status == TransactionStatus.RECOVERING:
        return []
    paid = txn.status in (TransactionStatus.RECOVERED, TransactionStatus.REFUNDED)
    if paid:
        actor, why = Actor.system(txn.organization_id, "Stripe webhook"), "the transaction is paid"
    elif txn.status == TransactionStatus.CANCELLED:
        actor, why = Actor.system(txn.organization_id, "Transaction closed"), "the transaction is closed"
    else:
        actor, why = Actor.system(txn.organization_id, "Recovery cancelled"), "its recovery was cancelled"
    done: list[str] = []
    if txn.stripe_payment_link_id:
        if gateway.retrieve_payment_link(txn.stripe_payment_link_id).active:
            links.deactivate_payment_link(session, gateway, txn, actor)
            done.append(txn.stripe_payment_link_id)
        elif not _link_switched_off_recorded(session, txn):
            # Off already (a one-payment link Stripe closed): said once, so that
            # `still_payable_after_closing` does not ask again.
            audit.record(
                session,
                actor,
                "stripe.payment_link_deactivated",
                transaction_id=txn.id,
                target_type="payment_link",
                target_id=txn.stripe_payment_link_id,
                payment_link_id=txn.stripe_payment_link_id,
                summary=f"Payment link {txn.stripe_payment_link_id} was already inactive at Stripe",
            )
    records = session.scalars(
        select(CheckoutSession).where(
            CheckoutSession.transaction_id == txn.id,
            CheckoutSession.status == CheckoutStatus.OPEN,
            CheckoutSession.stripe_session_id.is_not(None),
        )
    ).all()
    for record in records:
        session_id = record.stripe_session_id
        if session_id is None or session_id == paid_session_id:
            continue
        try:
            info = gateway.expire_checkout_session(session_id)
        except StripeFailure as failure:
            if failure.retryable:
                raise
            info = gateway.retrieve_checkout_session(session_id)  # no longer open: see why
        _follow(record, info)
        if record.status == CheckoutStatus.EXPIRED:
            audit.record(
                session,
                actor,
                "stripe.checkout_session_closed",
                transaction_id=txn.id,
                target_type="checkout_session",
                target_id=session_id,
                summary=f"Checkout session {session_id} expired: {why}",
            )
            done.append(session_id)
    log.info("stripe_payment_options_closed", transaction_id=txn.id, closed=done)
    return done


def _follow(record: CheckoutSession, info: CheckoutSessionInfo) -> None:
    status = info.status or CheckoutStatus.OPEN
    if status in CheckoutStatus.ALL and record.can_transition(status):
        record.transition(status)
    record.payment_status = info.payment_status
    if info.payment_intent_id and not record.stripe_payment_intent_id:
        record.stripe_payment_intent_id = info.payment_intent_id


# --- reconciliation ----------------------------------------------------------


@dataclass
class Reconciled:
    checked: int = 0
    recovered: int = 0
    expired: int = 0
    errors: int = 0
    closed_transaction_ids: list[tuple[int, str | None]] | None = None


# How far back the reconciliation looks for closed transactions still payable: their
# closing job is placed right after the commit that closed them, so only one lost with
# Redis (an outage, a flush) can leave them so, and that shows within minutes.
CLOSE_LOOKBACK = timedelta(days=3)


def _link_switched_off_recorded(session: DbSession, txn: Transaction) -> bool:
    return (
        session.scalar(
            select(AuditEvent.id)
            .where(
                AuditEvent.transaction_id == txn.id,
                AuditEvent.action == "stripe.payment_link_deactivated",
                AuditEvent.target_id == txn.stripe_payment_link_id,
            )
            .limit(1)
        )
        is not None
    )


def still_payable_after_closing(session: DbSession, now: datetime, limit: int = 200) -> list[int]:
    """Transactions that were closed to payment but still offer a way to pay.

    Recovered, refunded or closed ones, and open ones whose recovery staff
    cancelled (the transaction stays open, but what the recovery offered goes
    with it): an open Checkout Session of ours, or a Payment Link never
    switched off (no `stripe.payment_link_deactivated` for it).
    `close_payment_options` runs in a job queued after the commit that closed
    the transaction or cancelled the recovery; if Redis lost that job, the
    customer could still pay a closed debt or a recovery the merchant stopped.
    After a cancel only what was offered before it counts: a session or link
    made for the open transaction afterwards is the merchant's new offer.
    """
    A = AttemptStatus
    open_session = (
        select(CheckoutSession.id)
        .where(
            CheckoutSession.transaction_id == Transaction.id,
            CheckoutSession.status == CheckoutStatus.OPEN,
            CheckoutSession.stripe_session_id.is_not(None),
        )
        .exists()
    )
    link_switched_off = (
        select(AuditEvent.id)
        .where(
            AuditEvent.transaction_id == Transaction.id,
            AuditEvent.action == "stripe.payment_link_deactivated",
            AuditEvent.target_id == Transaction.stripe_payment_link_id,
        )
        .exists()
    )
    closed = session.scalars(
        select(Transaction.id)
        .where(
            Transaction.status.in_(CLOSED_STATUSES),
            Transaction.updated_at >= now - CLOSE_LOOKBACK,
            open_session | (Transaction.stripe_payment_link_id.is_not(None) & ~link_switched_off),
        )
        .order_by(Transaction.id)
        .limit(limit)
    )
    cancelled = (
        select(RecoveryAttempt.transaction_id, RecoveryAttempt.ended_at)
        .where(RecoveryAttempt.status == A.CANCELLED, RecoveryAttempt.ended_at >= now - CLOSE_LOOKBACK)
        .subquery()
    )
    running = (
        select(RecoveryAttempt.id)
        .where(RecoveryAttempt.transaction_id == Transaction.id, RecoveryAttempt.status.in_(A.ACTIVE))
        .exists()
    )
    session_before_cancel = (
        select(CheckoutSession.id)
        .where(
            CheckoutSession.transaction_id == Transaction.id,
            CheckoutSession.status == CheckoutStatus.OPEN,
            CheckoutSession.stripe_session_id.is_not(None),
            CheckoutSession.created_at <= cancelled.c.ended_at,
        )
        .exists()
    )
    link_before_cancel = (
        select(AuditEvent.id)
        .where(
            AuditEvent.transaction_id == Transaction.id,
            AuditEvent.action == "stripe.payment_link_created",
            AuditEvent.target_id == Transaction.stripe_payment_link_id,
            AuditEvent.created_at <= cancelled.c.ended_at,
        )
        .exists()
    )
    cancelled_recovery = session.scalars(
        select(Transaction.id)
        .join(cancelled, cancelled.c.transaction_id == Transaction.id)
        .where(
            Transaction.status == TransactionStatus.FAILED,
            ~running,
            session_before_cancel | (link_before_cancel & ~link_switched_off),
        )
        .distinct()
        .order_by(Transaction.id)
        .limit(limit)
    )
    return sorted({*closed, *cancelled_recovery})[:limit]


def sessions_to_reconcile(
    session: DbSession, older_than: timedelta, organization_id: int | None = None, limit: int = 500
) -> list[int]:
    """Our open Checkout Sessions older than `older_than` whose transaction is still collectable.

    Those of active attempts, and those made from the dashboard or the API
    (no attempt): a payment whose webhook was lost is recovered either way.
    """
    cutoff = utcnow() - older_than
    statement = (
        select(CheckoutSession.id)
        .join(Transaction, Transaction.id == CheckoutSession.transaction_id)
        .outerjoin(RecoveryAttempt, RecoveryAttempt.id == CheckoutSession.attempt_id)
        .where(
            CheckoutSession.status == CheckoutStatus.OPEN,
            CheckoutSession.stripe_session_id.is_not(None),
            CheckoutSession.created_at < cutoff,
            Transaction.status.not_in(CLOSED_STATUSES),
            (CheckoutSession.attempt_id.is_(None)) | (RecoveryAttempt.status.in_(AttemptStatus.ACTIVE)),
        )
        .order_by(CheckoutSession.created_at)
        .limit(limit)
    )
    if organization_id is not None:
        statement = statement.where(CheckoutSession.organization_id == organization_id)
    return list(session.scalars(statement))


def reconcile_session(session: DbSession, gateway: StripeGateway, record_id: int, result: Reconciled) -> None:
    """Re-read one session from Stripe and apply it through the webhook handler; the caller commits."""
    record = session.get(CheckoutSession, record_id, with_for_update=True)
    if record is None or record.status != CheckoutStatus.OPEN or record.stripe_session_id is None:
        return
    info = gateway.retrieve_checkout_session(record.stripe_session_id)
    result.checked += 1
    if info.status == "complete" and info.payment_status in ("paid", "no_payment_required"):
        ctx = Context(session, None, lambda: gateway, label=RECONCILIATION_LABEL)
        try:
            session_paid(ctx, session_object(info))
        except EventContradicts as refusal:
            log.warning("stripe_reconcile_refused", session_id=info.id, reason=str(refusal))
            return
        if ctx.closed_transaction_id is not None:
            result.recovered += 1
            result.closed_transaction_ids = [
                *(result.closed_transaction_ids or []),
                (ctx.closed_transaction_id, info.id),
            ]
            log.warning(
                "stripe_payment_reconciled",
                session_id=info.id,
                transaction_id=ctx.closed_transaction_id,
                hint="its webhook never arrived or was not processed",
            )
    else:
        _follow(record, info)
        if record.status == CheckoutStatus.EXPIRED:
            result.expired += 1
