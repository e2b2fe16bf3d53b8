"""RQ jobs of the recovery engine: one send per step, the sweeper that re-enqueues lost sends, auto-starts.

The sweeper runs every minute as one of the periodic jobs of `recovery.queue`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from rq import Retry

from recovery import queue
from recovery.config import settings
from recovery.extensions import db, mail
from recovery.jobs import app_job
from recovery.logs import get_logger
from recovery.messaging.providers import DATA_ANSWER_SECONDS, MessagingSettings, Outcome, Postman
from recovery.models import RecoveryAttempt, utcnow
from recovery.recoveries import automatic, bulk, repair, services
from recovery.recoveries.scheduling import send_job_id
from recovery.unit_of_work import commit_now, on_commit
from recovery.webhooks.jobs import queue_close_payment_options

log = get_logger("recovery.recoveries")

# A send job's time: the batch starts no delivery after BATCH_SENDING_SECONDS, and the
# last one may wait out an SMTP server's slow answer (DATA_ANSWER_SECONDS). Well under
# HANDOFF_ABANDONED, so a running job's hand-off never looks abandoned.
SEND_JOB_TIMEOUT = services.BATCH_SENDING_SECONDS + DATA_ANSWER_SECONDS + 4 * 30
assert services.HANDOFF_ABANDONED.total_seconds() > SEND_JOB_TIMEOUT
# Twilio lists a text it took within seconds; a minute's wait spares a false "not found".
LOOK_UP_AFTER = timedelta(minutes=1)


SEND_STEP = "recovery.recoveries.jobs.send_step"


def postman() -> Postman:
    return Postman(settings(MessagingSettings), mail)


def schedule_send(attempt_id: int, step: int, due: datetime, now: datetime | None = None) -> bool:
    """Make sure a job will send the attempt's step at `due`; call after the commit that set it."""
    return queue.place(
        SEND_STEP,
        send_job_id(attempt_id, step, due),
        due,
        attempt_id,
        step,
        now=now or utcnow(),
        timeout=SEND_JOB_TIMEOUT,
    )


def schedule_many(sends: Sequence[tuple[int, int, datetime]], now: datetime | None = None) -> int:
    """`schedule_send` for many (attempt id, step, due) at once, in two Redis round trips; how many placed."""
    jobs = [(send_job_id(*send), send[2], send[:2]) for send in sends]
    return queue.place_many(SEND_STEP, jobs, now=now or utcnow(), timeout=SEND_JOB_TIMEOUT)


def schedule_next(attempt: RecoveryAttempt) -> bool:
    """Schedule the attempt's next send, if it has one."""
    if not attempt.is_active or attempt.next_send_at is None:
        return False
    return schedule_send(attempt.id, attempt.step, attempt.next_send_at)


def unschedule(job_id: str | None) -> bool:
    return queue.remove(job_id)


def after_cancel(cancelled: services.RecoveryCancelled) -> None:
    """After the commit of a cancel: drop its waiting send, and close the ways to pay it left open.

    The customer's Checkout Session (up to a day) and the Payment Link (no end)
    would otherwise still take money for a recovery the merchant stopped.
    """
    unschedule(cancelled.pending_job_id)
    queue_close_payment_options(
        cancelled.attempt.transaction_id, None, retry=Retry(max=5, interval=[10, 60, 300, 1800, 3600])
    )


def after_close(transaction_id: int, cancelled: services.RecoveryCancelled | None) -> None:
    """After the commit of a transaction's close: as after a cancel, or, with no recovery running,
    switch off its Payment Link and open checkouts all the same."""
    if cancelled is not None:
        after_cancel(cancelled)
    else:
        queue_close_payment_options(
            transaction_id, None, retry=Retry(max=5, interval=[10, 60, 300, 1800, 3600])
        )


@app_job
def send_step(attempt_id: int, step: int) -> str:
    """Send one step of an attempt if still due, with other due sends in the same batch.

    Up to SEND_BATCH_SIZE attempts share one job and one SMTP connection
    (services.send_batch): a job costs the worker a few milliseconds, more
    than the send itself. The waiting jobs of the sends taken along are
    removed; any that already started find nothing to do. Safe to run twice:
    each message goes out once.
    """
    batch = services.send_batch(
        db.session,
        postman(),
        [(attempt_id, step)],
        base_url=settings().base_url,
        now=utcnow(),
        size=settings().send_batch_size,
    )
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
    due = services.due_attempts(db.session, now)
    db.session.rollback()  # read only; end the transaction
    placed = schedule_many(due, now)
    if placed:
        log.info("recovery_sweep_enqueued", count=placed)
    bulk.resume_stalled(db.session, now)  # bulk starts whose run died
    return placed


def queue_look_up(message_id: int, tries: int) -> None:
    """Look the text up at Twilio in a minute, when its list will show it if Twilio took it.

    One look-up per claim of the message (`tries`): a resend left unknown is looked up too.
    """
    queue.enqueue_once(  # a repeated batch or sweep finds it placed already
        "recovery.recoveries.jobs.look_up_sms",
        message_id,
        job_id=queue.job_id("recovery-lookup", message_id, tries),
        at=utcnow() + LOOK_UP_AFTER,
    )


@app_job
def look_up_sms(message_id: int) -> str:
    """Ask Twilio whether a text whose worker stopped mid-send went out (repair.look_up_sms)."""
    return repair.look_up_sms(db.session, postman(), message_id, utcnow())


def queue_resend(resend: repair.ResendQueued) -> None:
    """Place a staff member's resend; call after the commit that claimed it."""
    queue.enqueue(
        "recovery.recoveries.jobs.resend_message",
        resend.message_id,
        resend.tries,
        job_id=queue.job_id("recovery-resend", resend.message_id, resend.tries),
        job_timeout=SEND_JOB_TIMEOUT,
    )


@app_job
def resend_message(message_id: int, tries: int) -> str:
    """Send a message again that a staff member chose to resend (repair.send_claimed). Safe to run twice."""
    outcome = repair.send_claimed(db.session, postman(), message_id, tries, base_url=settings().base_url)
    if outcome == Outcome.UNKNOWN:
        queue_look_up(message_id, tries)  # a text: looked up at Twilio; an email: skipped there
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
    """Start the recovery of a failed payment imported from Stripe, if its organization wants that."""
    result = automatic.auto_start(db.session, transaction_id, now=utcnow())
    attempt = result.attempt
    if attempt is not None and attempt.is_active and attempt.next_send_at is not None:
        on_commit(db.session, schedule_send, attempt.id, attempt.step, attempt.next_send_at)
    return result.outcome
