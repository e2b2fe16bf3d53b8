"""RQ jobs of payments: close the other ways to pay once a transaction is closed; retry a card."""

from __future__ import annotations

from datetime import datetime

from rq import Retry

from recovery import queue as jobs_queue
from recovery.extensions import db
from recovery.jobs import app_job
from recovery.models import utcnow
from recovery.payments import closing, retries
from recovery.payments.gateway import stripe_gateway_or_none, stripe_settings

# Stripe calls a close_payment_options job makes at most before it gives up and retries.
CLOSE_CALLS = 5
# After a payment: soon, then backing off over a couple of hours (Stripe may be down).
PAID_CLOSE_RETRY = (5, [10, 60, 300, 1800, 3600])
# A card retry Stripe did not answer (network, rate limit, 5xx) is tried again with its
# key; inside retry_guard.RETRY_IN_FLIGHT (30 min), while the pay page waits for it.
CARD_RETRY_RETRY = (3, [30, 120, 600])
# Closing the customer's open sessions (a few) and the confirmation.
CARD_RETRY_CALLS = 6


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


def queue_retry_card(attempt_id: int, step: int, *, at: datetime | None = None) -> bool:
    """Queue the attempt's card-retry step once (job id card-retry-<attempt>-<step>), retried if transient."""
    tries, intervals = CARD_RETRY_RETRY
    return jobs_queue.enqueue_once(
        "recovery.payments.jobs.retry_card",
        attempt_id,
        step,
        job_id=jobs_queue.job_id("card-retry", attempt_id, step),
        at=at,
        retry=Retry(max=tries, interval=intervals),
        job_timeout=stripe_job_timeout(CARD_RETRY_CALLS),
    )


@app_job
def retry_card(attempt_id: int, step: int) -> str:
    """Run the attempt's card-retry step (`payments.retries.retry_card`); the CardRetry's status.

    A transient Stripe failure raises, so RQ's Retry runs it again with the same
    idempotency key; every other outcome is recorded and committed here.
    """
    gateway = stripe_gateway_or_none()
    if gateway is None:
        return "no stripe gateway"
    return retries.retry_card(db.session, attempt_id, step, now=utcnow(), gateway=gateway).status
