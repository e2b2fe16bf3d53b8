"""RQ jobs of the recovery engine: one send per step, the sweeper that re-enqueues lost sends, auto-starts.

Each job runs as one unit of work (`recovery.jobs.app_job`): it commits once
at its end, and what it made true is placed after that commit
(`recovery.recoveries.scheduling`). The sweeper runs every minute as one of
the periodic jobs of `recovery.queue`.
"""

from __future__ import annotations

from datetime import datetime

from recovery import queue
from recovery.config import settings
from recovery.extensions import db
from recovery.jobs import app_job
from recovery.logs import get_logger
from recovery.messaging.providers import Outcome
from recovery.messaging.sender import postman
from recovery.models import RecoveryAttempt, utcnow
from recovery.recoveries import automatic, bulk, repair, scheduling
from recovery.recoveries.claims import due_attempts
from recovery.recoveries.lifecycle import RecoveryCancelled
from recovery.recoveries.scheduling import queue_look_up, schedule_many, schedule_send, send_job_id
from recovery.recoveries.sending import send_batch
from recovery.unit_of_work import commit_now, on_commit

log = get_logger("recovery.recoveries")


@app_job
def send_step(attempt_id: int, step: int) -> str:
    """Send one step of an attempt if still due, with other due sends in the same batch.

    Up to SEND_BATCH_SIZE attempts share one job and one SMTP connection
    (sending.send_batch): a job costs the worker a few milliseconds, more
    than the send itself. The waiting jobs of the sends taken along are
    removed; any that already started find nothing to do. Safe to run twice:
    each message goes out once.
    """
    batch = send_batch(
        db.session,
        postman(),
        [(attempt_id, step)],
        base_url=settings().base_url,
        now=utcnow(),
        size=settings().send_batch_size,
    )
    # The batch committed its answers as it went: what follows is placed now.
    schedule_many(
        [
            (result.attempt_id, result.step, result.next_send_at)
            for result in batch.results
            if result.next_send_at is not None and result.outcome not in ("not_due", "stale", "in_progress")
        ]
    )
    if batch.taken:
        queue.discard_waiting(queue.redis_connection(), [send_job_id(*taken) for taken in batch.taken])
    for message_id, tries in batch.unknown_sms:
        queue_look_up(message_id, tries)
    return batch.results[0].outcome


def sweep_once(now: datetime) -> int:
    """Settle the claims of stopped sends, then enqueue every due send whose job is not waiting in Redis.

    Returns how many sends were placed.
    """
    repaired = repair.repair_abandoned(db.session, now)
    commit_now(db.session, "the settled claims must hold before their sends are placed again")
    for message_id, tries in repaired.to_look_up:
        queue_look_up(message_id, tries)
    if repaired.reclaimed or repaired.unknown:
        log.warning(
            "recovery_sends_repaired", sent_again=len(repaired.reclaimed), unknown=len(repaired.unknown)
        )
    due = due_attempts(db.session, now)
    db.session.rollback()  # read only; end the transaction
    placed = schedule_many(due, now)
    if placed:
        log.info("recovery_sweep_enqueued", count=placed)
    bulk.resume_stalled(db.session, now)  # bulk starts whose run died
    return placed


@app_job
def look_up_sms(message_id: int) -> str:
    """Ask Twilio whether a text whose worker stopped mid-send went out (repair.look_up_sms)."""
    return repair.look_up_sms(db.session, postman(), message_id, utcnow())


@app_job
def resend_message(message_id: int, tries: int) -> str:
    """Send a message again that a staff member chose to resend (repair.send_claimed). Safe to run twice."""
    outcome = repair.send_claimed(db.session, postman(), message_id, tries, base_url=settings().base_url)
    if outcome == Outcome.UNKNOWN:
        # A text: looked up at Twilio once this job's answer is committed; an email: skipped there.
        on_commit(db.session, queue_look_up, message_id, tries)
    return outcome


@app_job
def sweep() -> int:
    """The database is the source of truth: find due attempts without a waiting job and enqueue them.

    A periodic job (`recovery.queue.PERIODIC`): one run a minute however
    many workers run, and the next run is placed before this one works.
    """
    try:
        return sweep_once(utcnow())
    except Exception as error:
        log.exception("recovery_sweep_failed", error=str(error))
        raise  # RQ records the failed run with its traceback; the next one is already placed


@app_job
def start_imported_recovery(transaction_id: int) -> str:
    """Start the recovery of a failed payment imported from Stripe, if its organization wants that.

    The first send is placed after the job's commit (`lifecycle.start_recovery`).
    """
    return automatic.auto_start(db.session, transaction_id, now=utcnow()).outcome


# --- for callers that still hold objects ----------------------------------------------------


def schedule_next(attempt: RecoveryAttempt) -> bool:
    """Schedule the attempt's next send, if it has one (after a change made by hand: tests, scripts)."""
    if not attempt.is_active or attempt.next_send_at is None:
        return False
    return schedule_send(attempt.id, attempt.step, attempt.next_send_at)


def after_cancel(cancelled: RecoveryCancelled) -> None:
    """The old name of `scheduling.after_cancel`, which the cancel itself now registers after its commit."""
    scheduling.after_cancel(cancelled.attempt.transaction_id, cancelled.pending_job_id)
