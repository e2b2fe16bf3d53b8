"""RQ jobs of payments: close a transaction's other ways to pay, after the commit that closed it."""

from __future__ import annotations

from rq import Retry

from recovery import queue as jobs_queue
from recovery.extensions import db
from recovery.jobs import app_job
from recovery.payments import closing
from recovery.payments.gateway import stripe_gateway_or_none, stripe_settings

# Stripe calls a close_payment_options job makes at most before it gives up and retries.
CLOSE_CALLS = 5
# After a payment: soon, then backing off over a couple of hours (Stripe may be down).
PAID_CLOSE_RETRY = (5, [10, 60, 300, 1800, 3600])


def stripe_job_timeout(calls: int) -> int:
    """A job timeout that covers `calls` Stripe calls even when every try of each times out."""
    return int(stripe_settings().worst_case_seconds * calls) + 30


def queue_close_payment_options(transaction_id: int, paid_session_id: str | None, *, retry: Retry) -> None:
    """Queue the closing of a closed transaction's other ways to pay, once per transaction.

    The event's job, a job run again for it, the reconciliation and a cancel
    may each ask; one job id per transaction makes it one job, not several
    racing through the same Stripe calls. An on_commit follow-up: call it
    after the commit that closed the transaction (`on_commit`).
    """
    jobs_queue.enqueue_once(
        "recovery.payments.jobs.close_payment_options",
        transaction_id,
        paid_session_id,
        job_id=jobs_queue.job_id("close-payment-options", transaction_id),
        retry=retry,
        # Deactivate the link and expire the other open sessions: a few calls.
        job_timeout=stripe_job_timeout(CLOSE_CALLS),
    )


def queue_close_after_payment(transaction_id: int, paid_session_id: str | None) -> None:
    """`queue_close_payment_options` for a transaction just paid (every session but the paid one)."""
    tries, intervals = PAID_CLOSE_RETRY
    queue_close_payment_options(transaction_id, paid_session_id, retry=Retry(max=tries, interval=intervals))


@app_job
def close_payment_options(transaction_id: int, paid_session_id: str | None) -> list[str]:
    """Deactivate the Payment Link and expire the other sessions of a closed transaction."""
    gateway = stripe_gateway_or_none()
    if gateway is None:
        return []
    return closing.close_payment_options(db.session, gateway, transaction_id, paid_session_id)
