"""Processing stored Stripe events: each applied once in effect through its handler; replay; sweeping.

Plain functions over a SQLAlchemy session; callers (the RQ jobs, the admin
views) commit. Nothing here reads Flask's request globals. Receiving is in
receiving.py, the reconciliation in reconciliation.py, the admin page's
queries in events.py.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import (
    AuditEvent,
    PaymentFulfilment,
    WebhookEvent,
    WebhookState,
    utcnow,
)
from recovery.models.base import DbSession
from recovery.payments.fulfilment import EventContradicts
from recovery.payments.gateway import StripeGateway
from recovery.payments.jobs import queue_close_after_payment
from recovery.refusals import Refused
from recovery.unit_of_work import on_commit
from recovery.webhooks.context import Context
from recovery.webhooks.failed_payments import queue_auto_start
from recovery.webhooks.handlers import HANDLERS

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
    return Outcome(stripe_event_id, state, ran=True, organization_id=event.organization_id)


def _already_applied(session: DbSession, event: WebhookEvent) -> Outcome:
    """The outcome of an event applied earlier; its follow-ups are queued again after the commit.

    A job runs again for an applied event when the queue lost the follow-ups
    after the commit that applied it (Redis failed, or the worker died, in
    between): RQ retries the job, and its follow-ups are read back from what
    the event left, so a recovered transaction's other ways to pay still get
    closed. Both follow-up jobs are safe to run twice (and queued once per id).
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
    if fulfilled is not None:
        on_commit(session, queue_close_after_payment, *fulfilled)
    if imported is not None:
        on_commit(session, queue_auto_start, imported)
    return outcome


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
