"""RQ jobs for Stripe webhooks: process one event, close payment options, sweep, reconcile.

The sweeper and the reconciliation are periodic jobs of `recovery.queue`.
"""

from __future__ import annotations

import time
from contextlib import suppress
from datetime import timedelta
from typing import Any

from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.job import Job
from sqlalchemy.exc import SQLAlchemyError

from recovery import queue as jobs_queue
from recovery.config import settings
from recovery.extensions import db
from recovery.jobs import app_job
from recovery.logs import get_logger
from recovery.models import utcnow
from recovery.payments.gateway import StripeFailure, StripeGateway, StripeSettings
from recovery.webhooks import handlers, services

log = get_logger("recovery.webhooks")

# The sweeper runs every STRIPE_WEBHOOK_SWEEP_SECONDS (60) and enqueues events pending that
# long: such an event has lost its job (Redis was down, or the job vanished).
# Stripe calls a close_payment_options job makes at most before it gives up and retries.
CLOSE_CALLS = 5
# A processing job stops taking other pending events along after this long.
TAKE_ALONG_SECONDS = 5


def stripe_job_timeout(calls: int) -> int:
    """A job timeout that covers `calls` Stripe calls even when every try of each times out."""
    return int(settings(StripeSettings).worst_case_seconds * calls) + 30


def job_id(stripe_event_id: str) -> str:
    return jobs_queue.job_id("stripe-event", stripe_event_id)


def _livemode() -> bool | None:
    return settings(StripeSettings).livemode


def gateway_or_none() -> StripeGateway | None:
    try:
        return StripeGateway(settings(StripeSettings))
    except StripeFailure:
        return None


def enqueue_processing(stripe_event_id: str, queue: Queue | None = None) -> Job:
    """Queue the processing job of one stored event; call after the commit that stored it.

    One Redis round trip: the job and its place in the queue go in one pipeline
    (RQ alone uses two), which the webhook endpoint pays on every event.
    """
    intervals = list(settings().webhook_retry_intervals)
    queue = queue or jobs_queue.get_queue()
    with queue.connection.pipeline() as pipe:
        job = queue.enqueue_call(
            "recovery.webhooks.jobs.process_webhook_event",
            args=(stripe_event_id,),
            job_id=job_id(stripe_event_id),
            retry=Retry(max=len(intervals), interval=intervals),
            result_ttl=3600,
            failure_ttl=7 * 24 * 3600,
            # Handlers re-read at most one session from Stripe; the job may start
            # one more event (taken along) just before TAKE_ALONG_SECONDS.
            timeout=max(120, stripe_job_timeout(2) + TAKE_ALONG_SECONDS),
            pipeline=pipe,
        )
        pipe.execute()
    return job


@app_job
def process_webhook_event(stripe_event_id: str) -> str:
    """Process one stored event, then other pending ones (see `_take_along`).

    Safe to run twice or concurrently (see services.process_event). A failure
    of this job's own event is raised, so RQ retries it with backoff.
    """
    # Not waiting for a lock: the event may sit in another job's batch, which
    # holds it until that batch commits. Two workers waiting on each other's
    # batches in turn drained no faster than one.
    result = _apply(stripe_event_id, wait=False)
    if isinstance(result, services.ProcessingFailed):
        raise result.error from None
    _take_along(stripe_event_id)
    if result.state == "busy":
        # That batch has usually applied it by now; otherwise wait for it and apply it here.
        result = _apply(stripe_event_id)
        if isinstance(result, services.ProcessingFailed):
            raise result.error from None
    return result.state


def _apply(stripe_event_id: str, *, wait: bool = True) -> services.Outcome | services.ProcessingFailed:
    """Process the event in its own database transaction, then queue what follows from it."""
    try:
        outcome = services.process_event(
            db.session, stripe_event_id, gateway_or_none, skip_locked=not wait, livemode=_livemode()
        )
        db.session.commit()
    except services.ProcessingFailed as failure:
        db.session.rollback()
        services.record_failure(db.session, failure)
        db.session.commit()
        return failure
    _follow_up(outcome)
    return outcome


def _follow_up(outcome: services.Outcome) -> None:
    """Queue the jobs an applied event calls for; after the commit that applied it."""
    if outcome.closed_transaction_id is not None:
        queue_close_payment_options(
            outcome.closed_transaction_id,
            outcome.paid_session_id,
            retry=Retry(max=5, interval=[10, 60, 300, 1800, 3600]),
        )
    if outcome.imported_transaction_id is not None:
        # A job of its own, so a refusal never fails the event.
        jobs_queue.enqueue_once(
            "recovery.recoveries.jobs.start_imported_recovery",
            outcome.imported_transaction_id,
            job_id=jobs_queue.job_id("auto-start", outcome.imported_transaction_id),
            retry=Retry(max=3, interval=[10, 60, 300]),
        )


def queue_close_payment_options(transaction_id: int, paid_session_id: str | None, *, retry: Retry) -> None:
    """Queue the closing of a recovered transaction's other ways to pay, once per transaction.

    The event's job, a job run again for it (see services._already_applied)
    and the reconciliation may each ask; one job id per transaction makes it
    one job, not several racing through the same Stripe calls.
    """
    jobs_queue.enqueue_once(
        "recovery.webhooks.jobs.close_payment_options",
        transaction_id,
        paid_session_id,
        job_id=jobs_queue.job_id("close-payment-options", transaction_id),
        retry=retry,
        # Deactivate the link and expire the other open sessions: a few calls.
        job_timeout=stripe_job_timeout(CLOSE_CALLS),
    )


def _take_along(asked: str) -> int:
    """Apply up to STRIPE_WEBHOOK_BATCH_SIZE - 1 other pending events in this job; return how many.

    RQ spends a few milliseconds and dozens of Redis commands on every job,
    more than most events cost to apply: a burst drains far faster when a job
    takes the waiting events along and removes their jobs. The batch is one
    transaction, committed once (a durable commit per event would cost more
    than most events). It is first applied straight through; only if an event
    fails is it rolled back and applied again with each event in a savepoint
    (two more round trips an event, which the usual batch does not pay), so
    that the failing one rolls back its own changes only and stays pending,
    for its own job, or the sweeper, to fail and retry with backoff (an event
    whose job was never queued would otherwise stay failed without one). An
    event locked elsewhere is skipped. If the job dies before the commit, the
    events are still pending and their jobs still queued. It stops taking
    more after TAKE_ALONG_SECONDS, so its timeout still covers the last one.
    """
    size = settings().webhook_batch_size - 1
    if size <= 0:
        return 0
    try:
        applied = _apply_batch(asked, size, isolate=False)
    except (services.ProcessingFailed, SQLAlchemyError) as error:
        db.session.rollback()
        failed = error.stripe_event_id if isinstance(error, services.ProcessingFailed) else None
        log.warning(
            "stripe_webhook_take_along_isolating",
            event_id=asked,
            failed_event_id=failed,
            error=str(error)[:300],
        )
        applied = _apply_batch(asked, size, isolate=True)
    db.session.commit()
    for outcome in applied:
        _follow_up(outcome)
    if applied:
        with suppress(RedisError):  # best effort: a job left behind finds its event done
            jobs_queue.discard_waiting(
                jobs_queue.redis_connection(), [job_id(o.stripe_event_id) for o in applied]
            )
    return len(applied)


def _apply_batch(asked: str, size: int, *, isolate: bool) -> list[services.Outcome]:
    """Lock up to `size` pending events and apply them; `isolate`: each in a savepoint, failures skipped."""
    began = time.monotonic()
    waiting = services.pending_events(db.session, size, exclude=asked)
    claimed = handlers.load_claimed_transactions(db.session, [e.payload["data"]["object"] for e in waiting])
    livemode = _livemode()
    applied: list[services.Outcome] = []
    for event in waiting:
        if time.monotonic() - began > TAKE_ALONG_SECONDS:
            break
        if not isolate:
            outcome = services.apply_event(db.session, event, gateway_or_none, livemode=livemode)
        else:
            stripe_event_id = event.stripe_event_id
            try:
                with db.session.begin_nested():
                    outcome = services.apply_event(db.session, event, gateway_or_none, livemode=livemode)
            except (services.ProcessingFailed, SQLAlchemyError) as error:
                # Its savepoint is rolled back and it stays pending: its own job (or, if
                # it has none, the sweeper's) records the failure and retries it with backoff.
                log.warning(
                    "stripe_webhook_take_along_failed", event_id=stripe_event_id, error=str(error)[:300]
                )
                continue
        if outcome.ran:
            applied.append(outcome)
    del claimed  # held until here, so that `match` found them in the session
    return applied


@app_job
def close_payment_options(transaction_id: int, paid_session_id: str | None) -> list[str]:
    """Deactivate the Payment Link and expire the other sessions of a recovered transaction."""
    gateway = gateway_or_none()
    if gateway is None:
        return []
    done = services.close_payment_options(db.session, gateway, transaction_id, paid_session_id)
    db.session.commit()
    return done


@app_job
def sweep_webhook_events() -> dict[str, Any]:
    """Enqueue every event stored but still pending after a minute. Never raises (it repeats on success)."""
    try:
        queue = jobs_queue.get_queue()
        stale = services.stale_pending(db.session, timedelta(seconds=settings().webhook_sweep_seconds))
        db.session.rollback()
        statuses = jobs_queue.job_statuses(queue.connection, [job_id(event_id) for event_id in stale])
        enqueued = [
            event_id
            for event_id, status in zip(stale, statuses, strict=True)
            if status not in jobs_queue.WAITING
        ]
        for event_id in enqueued:
            enqueue_processing(event_id, queue)
    except Exception as error:
        log.exception("stripe_webhook_sweep_failed", error=str(error))
        return {"error": str(error)}
    if enqueued:
        log.warning("stripe_webhook_swept", count=len(enqueued), event_ids=enqueued[:20])
    return {"pending": len(stale), "enqueued": len(enqueued)}


@app_job
def reconcile_checkout_sessions(organization_id: int | None = None) -> dict[str, int]:
    """Re-read open sessions older than STRIPE_RECONCILE_AFTER_MINUTES and apply completed ones."""
    result = services.Reconciled()
    gateway = gateway_or_none()
    if gateway is None:
        return {"checked": 0, "recovered": 0, "expired": 0, "errors": 0}
    minutes = settings().reconcile_after_minutes
    ids = services.sessions_to_reconcile(db.session, timedelta(minutes=minutes), organization_id)
    db.session.rollback()
    for record_id in ids:
        try:
            services.reconcile_session(db.session, gateway, record_id, result)
            db.session.commit()
        except Exception as error:
            db.session.rollback()
            result.errors += 1
            log.warning("stripe_reconcile_failed", checkout_session_id=record_id, error=str(error))
    for transaction_id, session_id in result.closed_transaction_ids or []:
        queue_close_payment_options(transaction_id, session_id, retry=Retry(max=5, interval=60))
    if organization_id is None:
        # Closing jobs lost with Redis: a closed debt must not stay payable.
        for transaction_id in services.still_payable_after_closing(db.session, utcnow()):
            queue_close_payment_options(transaction_id, None, retry=Retry(max=5, interval=60))
        db.session.rollback()
    summary = {"checked": result.checked, "recovered": result.recovered, "expired": result.expired}
    log.info("stripe_reconciled", organization_id=organization_id, errors=result.errors, **summary)
    return {**summary, "errors": result.errors}
