"""RQ jobs for Stripe webhooks: process one event (and others pending), sweep, reconcile.

The sweeper and the reconciliation are periodic jobs of `recovery.queue`.
What an event calls for afterwards (closing the other ways to pay, starting
an imported payment's recovery) the services queue themselves, after the
commit that applied it (`recovery.unit_of_work.on_commit`).
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
from recovery.payments import closing
from recovery.payments import jobs as payment_jobs
from recovery.payments.gateway import stripe_gateway_or_none, stripe_settings
from recovery.payments.jobs import queue_close_payment_options, stripe_job_timeout
from recovery.unit_of_work import commit_now, savepoint
from recovery.webhooks import matching, processing, reconciliation

log = get_logger("recovery.webhooks")

# A processing job stops taking other pending events along after this long.
TAKE_ALONG_SECONDS = 5


def job_id(stripe_event_id: str) -> str:
    return jobs_queue.job_id("stripe-event", stripe_event_id)


def _livemode() -> bool | None:
    return stripe_settings().livemode


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

    Safe to run twice or concurrently (see processing.process_event). A failure
    of this job's own event is raised, so RQ retries it with backoff.
    """
    # Not waiting for a lock: the event may sit in another job's batch, which
    # holds it until that batch commits. Two workers waiting on each other's
    # batches in turn drained no faster than one.
    result = _apply(stripe_event_id, wait=False)
    if isinstance(result, processing.ProcessingFailed):
        raise result.error from None
    _take_along(stripe_event_id)
    if result.state == "busy":
        # That batch has usually applied it by now; otherwise wait for it and apply it here.
        result = _apply(stripe_event_id)
        if isinstance(result, processing.ProcessingFailed):
            raise result.error from None
    return result.state


def _apply(stripe_event_id: str, *, wait: bool = True) -> processing.Outcome | processing.ProcessingFailed:
    """Process the event in its own database transaction; what follows from it is queued once that commits."""
    try:
        outcome = processing.process_event(
            db.session, stripe_event_id, stripe_gateway_or_none, skip_locked=not wait, livemode=_livemode()
        )
        commit_now(db.session, "the job's own event, before it takes others along")
    except processing.ProcessingFailed as failure:
        # Undo everything the handler did before recording why it failed.
        db.session.rollback()
        processing.record_failure(db.session, failure)
        commit_now(db.session, "the failure of the job's own event, before the job raises it")
        return failure
    return outcome


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
    except (processing.ProcessingFailed, SQLAlchemyError) as error:
        # The batch goes back to before it began (its follow-ups with it), to be applied again isolated.
        db.session.rollback()
        failed = error.stripe_event_id if isinstance(error, processing.ProcessingFailed) else None
        log.warning(
            "stripe_webhook_take_along_isolating",
            event_id=asked,
            failed_event_id=failed,
            error=str(error)[:300],
        )
        applied = _apply_batch(asked, size, isolate=True)
    commit_now(db.session, "the events taken along, in one commit, before their jobs are discarded")
    if applied:
        with suppress(RedisError):  # best effort: a job left behind finds its event done
            jobs_queue.discard_waiting(
                jobs_queue.redis_connection(), [job_id(o.stripe_event_id) for o in applied]
            )
    return len(applied)


def _apply_batch(asked: str, size: int, *, isolate: bool) -> list[processing.Outcome]:
    """Lock up to `size` pending events and apply them; `isolate`: each in a savepoint, failures skipped."""
    began = time.monotonic()
    waiting = processing.pending_events(db.session, size, exclude=asked)
    claimed = matching.load_claimed_transactions(db.session, [e.payload["data"]["object"] for e in waiting])
    livemode = _livemode()
    applied: list[processing.Outcome] = []
    for event in waiting:
        if time.monotonic() - began > TAKE_ALONG_SECONDS:
            break
        if not isolate:
            outcome = processing.apply_event(db.session, event, stripe_gateway_or_none, livemode=livemode)
        else:
            stripe_event_id = event.stripe_event_id
            try:
                with savepoint(db.session):
                    outcome = processing.apply_event(
                        db.session, event, stripe_gateway_or_none, livemode=livemode
                    )
            except (processing.ProcessingFailed, SQLAlchemyError) as error:
                # Its savepoint (and follow-ups) rolled back, it stays pending: its own job (or, if
                # it has none, the sweeper's) records the failure and retries it with backoff.
                log.warning(
                    "stripe_webhook_take_along_failed", event_id=stripe_event_id, error=str(error)[:300]
                )
                continue
        if outcome.ran:
            applied.append(outcome)
    del claimed  # held until here, so that `match` found them in the session
    return applied


# Jobs queued before this job moved to recovery/payments/jobs.py name it here.
close_payment_options = payment_jobs.close_payment_options


@app_job
def start_imported_recovery(transaction_id: int) -> None:
    """A job queued before this one moved to recovery/recoveries/jobs.py: hand it on there.

    By dotted path, so this module still imports nothing of recoveries.
    """
    jobs_queue.enqueue("recovery.recoveries.jobs.start_imported_recovery", transaction_id)


@app_job
def sweep_webhook_events() -> dict[str, Any]:
    """Enqueue every event stored but still pending after a minute. Never raises (it repeats on success)."""
    try:
        queue = jobs_queue.get_queue()
        stale = processing.stale_pending(db.session, timedelta(seconds=settings().webhook_sweep_seconds))
        db.session.rollback()  # nothing written: end the read before the Redis calls
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
    """Re-read open sessions older than STRIPE_RECONCILE_AFTER_MINUTES and apply completed ones.

    Each session is applied and committed on its own: one that fails is
    rolled back and counted, and the others stand.
    """
    result = reconciliation.Reconciled()
    gateway = stripe_gateway_or_none()
    if gateway is None:
        return {"checked": 0, "recovered": 0, "expired": 0, "errors": 0}
    minutes = settings().reconcile_after_minutes
    ids = reconciliation.sessions_to_reconcile(db.session, timedelta(minutes=minutes), organization_id)
    db.session.rollback()  # nothing written: end the read before the Stripe calls
    for record_id in ids:
        try:
            reconciliation.reconcile_session(db.session, gateway, record_id, result)
            commit_now(db.session, "one reconciled session, kept whatever happens to the next")
        except Exception as error:
            db.session.rollback()  # this session's changes only: the ones before are committed
            result.errors += 1
            log.warning("stripe_reconcile_failed", checkout_session_id=record_id, error=str(error))
    if organization_id is None:
        # Closing jobs lost with Redis: a closed debt must not stay payable.
        for transaction_id in closing.still_payable_after_closing(db.session, utcnow()):
            queue_close_payment_options(transaction_id, None, retry=Retry(max=5, interval=60))
    summary = {"checked": result.checked, "recovered": result.recovered, "expired": result.expired}
    log.info("stripe_reconciled", organization_id=organization_id, errors=result.errors, **summary)
    return {**summary, "errors": result.errors}
