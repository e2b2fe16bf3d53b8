"""Placing the recovery jobs in the queue: sends, look-ups at Twilio, resends; no app context, no database.

A send job carries only ids. Its job id names the attempt, the step and the
due time, so the sweeper can tell whether the send the database expects is
already waiting in Redis, and scheduling the same send twice is a no-op.

Jobs are named by their dotted path (`recovery.queue`), so this module imports
none of the code they run: the services that make a send true register its
placement here with `on_commit`, and `jobs.py` imports those services.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from rq import Retry

from recovery import queue
from recovery.messaging.smtp import DATA_ANSWER_SECONDS
from recovery.models import utcnow
from recovery.models.base import DbSession
from recovery.payments.jobs import queue_close_payment_options
from recovery.recoveries.handoff import BATCH_SENDING_SECONDS, HANDOFF_ABANDONED
from recovery.unit_of_work import on_commit, pending

# A send job's time: the batch starts no delivery after BATCH_SENDING_SECONDS, and the
# last one may wait out an SMTP server's slow answer (DATA_ANSWER_SECONDS). Well under
# HANDOFF_ABANDONED, so a running job's hand-off never looks abandoned.
SEND_JOB_TIMEOUT = BATCH_SENDING_SECONDS + DATA_ANSWER_SECONDS + 4 * 30
assert HANDOFF_ABANDONED.total_seconds() > SEND_JOB_TIMEOUT
# Twilio lists a text it took within seconds; a minute's wait spares a false "not found".
LOOK_UP_AFTER = timedelta(minutes=1)
# Switching off a Payment Link is a Stripe call that may fail for a while.
CLOSE_RETRY = (5, [10, 60, 300, 1800, 3600])

SEND_STEP = "recovery.recoveries.jobs.send_step"
LOOK_UP_SMS = "recovery.recoveries.jobs.look_up_sms"
RESEND_MESSAGE = "recovery.recoveries.jobs.resend_message"


def send_job_id(attempt_id: int, step: int, due: datetime) -> str:
    return queue.job_id("recovery-send", attempt_id, step, due)


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


def schedule_after_commit(session: DbSession, attempt_id: int, step: int, due: datetime) -> None:
    """Place the send once the session commits, with every other send of that commit.

    One follow-up for the whole transaction, so a bulk start's chunk of 50
    costs the two Redis round trips of `schedule_many`, as one start does.
    """
    for follow_up in pending(session):
        if follow_up.fn is schedule_many:
            follow_up.args[0].append((attempt_id, step, due))
            return
    on_commit(session, schedule_many, [(attempt_id, step, due)])


def unschedule(job_id: str | None) -> bool:
    return queue.remove(job_id)


def after_cancel(transaction_id: int, waiting_job_id: str | None) -> None:
    """After the commit of a cancel: drop its waiting send, and close the ways to pay it left open.

    The customer's Checkout Session (up to a day) and the Payment Link (no end)
    would otherwise still take money for a recovery the merchant stopped.
    """
    unschedule(waiting_job_id)
    tries, intervals = CLOSE_RETRY
    queue_close_payment_options(transaction_id, None, retry=Retry(tries, intervals))


def queue_look_up(message_id: int, tries: int) -> None:
    """Look the text up at Twilio in a minute, when its list will show it if Twilio took it.

    One look-up per claim of the message (`tries`): a resend left unknown is looked up too.
    """
    queue.enqueue_once(  # a repeated batch or sweep finds it placed already
        LOOK_UP_SMS,
        message_id,
        job_id=queue.job_id("recovery-lookup", message_id, tries),
        at=utcnow() + LOOK_UP_AFTER,
    )


def queue_resend(message_id: int, tries: int) -> None:
    """Place a staff member's resend; call after the commit that claimed it."""
    queue.enqueue(
        RESEND_MESSAGE,
        message_id,
        tries,
        job_id=queue.job_id("recovery-resend", message_id, tries),
        job_timeout=SEND_JOB_TIMEOUT,
    )
