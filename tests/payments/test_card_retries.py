"""Card retries: each rule (limits, do_not_contact, paid, no saved card), each test card, once per step.

Through the real Stripe sandbox over HTTP (stripe-python); `now` is handed to
the service, so the limits are checked at the times a test names.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from recovery.audit import Actor
from recovery.extensions import db as _db
from recovery.models import (
    AttemptStatus,
    CardRetry,
    CheckoutSession,
    CheckoutStatus,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.models.card_retry import RetryStatus
from recovery.payments import checkout, jobs, retries
from recovery.payments.gateway import StripeFailure, StripeGateway, StripeSettings
from recovery.payments.retries import MAX_RETRIES_PER_WINDOW, NoSuchAttempt
from recovery.payments.rules import PaymentRefused
from recovery.recoveries import paying
from recovery.refusals import Refused
from tests.payments.card_retry_helpers import (
    AUTH_ALWAYS,
    AUTH_ONCE,
    CUSTOMER_FAIL,
    INSUFFICIENT,
    VISA,
    confirms,
    failed_payment,
    reload,
    retries_of,
    retry_setup,
    sandbox_client,
    summaries,
)


@pytest.fixture
def app_config(stripe_sandbox: Any) -> dict[str, Any]:
    stripe_sandbox.reset()
    return {"STRIPE_SECRET_KEY": stripe_sandbox.api_key, "STRIPE_API_BASE": stripe_sandbox.base_url}


@pytest.fixture
def gateway(app: Flask) -> StripeGateway:
    return StripeGateway(StripeSettings.from_config(app.config))


def run(
    attempt_id: int, step: int = 0, *, now: Any = None, gateway: StripeGateway | None = None
) -> CardRetry:
    """The service as the job runs it: one unit of work, committed at its end."""
    retry = retries.retry_card(_db.session, attempt_id, step, now=now or utcnow(), gateway=gateway)
    _db.session.commit()
    return retry


# --- each test card ----------------------------------------------------------------------------


def test_insufficient_funds_is_declined_and_becomes_the_transactions_reason(
    stripe_sandbox, make_org, make_transaction, gateway
):
    card = failed_payment(stripe_sandbox, INSUFFICIENT)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card, failure_code="card_declined")

    retry = run(attempt_id, 1, gateway=gateway)

    assert (retry.status, retry.decline_code) == (RetryStatus.DECLINED, "insufficient_funds")
    assert retry.idempotency_key == f"retry-{attempt_id}-1" and retry.finished_at is not None
    txn = reload(Transaction, txn_id)
    assert txn.failure_code == "insufficient_funds" and txn.decline_category == "retry_later"
    assert txn.status == TransactionStatus.RECOVERING
    assert summaries(txn_id) == ["Card retry declined: insufficient funds"]
    [call] = confirms(stripe_sandbox)
    assert call["path"] == f"/v1/payment_intents/{card[0]}/confirm"
    assert call["idempotency_key"] == f"retry-{attempt_id}-1" and call["status"] == 402


def test_a_card_that_attached_then_fails_every_charge(stripe_sandbox, make_org, make_transaction, gateway):
    card = failed_payment(stripe_sandbox, CUSTOMER_FAIL)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card, failure_code="generic_decline")

    retry = run(attempt_id, gateway=gateway)

    assert (retry.status, retry.decline_code) == (RetryStatus.DECLINED, "generic_decline")
    assert reload(Transaction, txn_id).failure_code == "generic_decline"


@pytest.mark.parametrize("number", [VISA, AUTH_ONCE])
def test_a_good_card_is_charged_and_left_to_the_webhook(
    stripe_sandbox, make_org, make_transaction, gateway, number
):
    card = failed_payment(stripe_sandbox, number)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)

    retry = run(attempt_id, gateway=gateway)

    assert retry.status == RetryStatus.SUCCEEDED
    intent = sandbox_client(stripe_sandbox).v1.payment_intents.retrieve(card[0])
    assert intent.status == "succeeded" and intent.amount_received == 5000
    # Recovered by payment_intent.succeeded, as any payment is (test_card_retries_end_to_end.py).
    assert reload(Transaction, txn_id).status == TransactionStatus.RECOVERING
    assert summaries(txn_id) == ["Card retry charged $50.00 to the saved card"]


def test_authentication_required_asks_the_customer(stripe_sandbox, make_org, make_transaction, gateway):
    card = failed_payment(stripe_sandbox, AUTH_ALWAYS)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card, failure_code="authentication_required")

    retry = run(attempt_id, gateway=gateway)

    assert (retry.status, retry.decline_code) == (RetryStatus.REQUIRES_ACTION, "authentication_required")
    assert summaries(txn_id) == ["Card retry needs the customer: authentication required"]
    assert reload(Transaction, txn_id).failure_code == "authentication_required"


# --- once per step; a crash re-runs with the same key ------------------------------------------


def test_a_step_runs_once(stripe_sandbox, make_org, make_transaction, gateway):
    card = failed_payment(stripe_sandbox, INSUFFICIENT)
    _txn_id, attempt_id = retry_setup(make_org, make_transaction, card)

    first = run(attempt_id, 2, gateway=gateway)
    second = run(attempt_id, 2, gateway=gateway, now=utcnow() + timedelta(days=3))

    assert first.id == second.id and second.status == RetryStatus.DECLINED
    assert len(confirms(stripe_sandbox)) == 1


def test_a_reservation_left_by_a_crash_is_sent_again_with_its_key(
    stripe_sandbox, make_org, make_transaction, gateway
):
    """The first run reserved, reached Stripe (the card was charged) and died before its commit."""
    card = failed_payment(stripe_sandbox, VISA)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)
    txn = reload(Transaction, txn_id)
    key = retries.retry_key(attempt_id, 0)
    _db.session.add(
        CardRetry(
            organization_id=txn.organization_id,
            transaction_id=txn_id,
            attempt_id=attempt_id,
            step=0,
            payment_intent_id=card[0],
            payment_method_id=card[2],
            idempotency_key=key,
            status=RetryStatus.PENDING,
            created_at=utcnow() - timedelta(minutes=1),
        )
    )
    _db.session.commit()
    gateway.confirm_off_session(payment_intent_id=card[0], payment_method_id=card[2], key=key)

    retry = run(attempt_id, gateway=gateway)

    assert retry.status == RetryStatus.SUCCEEDED
    calls = confirms(stripe_sandbox)
    assert [c["idempotency_key"] for c in calls] == [key, key]
    assert [c["replayed"] for c in calls] == [False, True]
    assert (
        len(sandbox_client(stripe_sandbox).v1.charges.list({"payment_intent": card[0]}).data) == 2
    )  # fail + 1


def _crashed_reservation(txn_id: int, attempt_id: int, card: tuple[str, str, str]) -> str:
    txn = reload(Transaction, txn_id)
    key = retries.retry_key(attempt_id, 0)
    _db.session.add(
        CardRetry(
            organization_id=txn.organization_id,
            transaction_id=txn_id,
            attempt_id=attempt_id,
            step=0,
            payment_intent_id=card[0],
            payment_method_id=card[2],
            idempotency_key=key,
            status=RetryStatus.PENDING,
            created_at=utcnow() - timedelta(hours=1),
        )
    )
    _db.session.commit()
    return key


@pytest.mark.parametrize("reached_stripe", [True, False])
def test_a_crashed_reservation_of_a_transaction_paid_since_is_never_sent_again(
    stripe_sandbox, make_org, make_transaction, gateway, reached_stripe
):
    """Recovered meanwhile (by the retry's own charge, or by the customer): ask Stripe, do not confirm."""
    card = failed_payment(stripe_sandbox, VISA)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)
    key = _crashed_reservation(txn_id, attempt_id, card)
    if reached_stripe:
        gateway.confirm_off_session(payment_intent_id=card[0], payment_method_id=card[2], key=key)
    txn = reload(Transaction, txn_id)
    txn.status = TransactionStatus.RECOVERED
    _db.session.commit()

    retry = run(attempt_id, gateway=gateway)

    assert retry.status == (RetryStatus.SUCCEEDED if reached_stripe else RetryStatus.SKIPPED)
    assert len(confirms(stripe_sandbox)) == (1 if reached_stripe else 0)
    intent = sandbox_client(stripe_sandbox).v1.payment_intents.retrieve(card[0])
    assert intent.status == ("succeeded" if reached_stripe else "requires_payment_method")


def test_a_transient_stripe_failure_is_an_error_tried_again_with_the_same_key(
    stripe_sandbox, make_org, make_transaction, gateway
):
    card = failed_payment(stripe_sandbox, INSUFFICIENT)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)
    stripe_sandbox.fault(status=503, count=3)  # the call and stripe-python's two retries

    with pytest.raises(StripeFailure) as failure:
        retries.retry_card(_db.session, attempt_id, 0, now=utcnow(), gateway=gateway)
    _db.session.rollback()  # the job's boundary, after the raise
    assert failure.value.retryable
    [kept] = retries_of(txn_id)
    assert kept.status == RetryStatus.ERROR and kept.finished_at is None  # RQ's Retry runs it again

    retry = run(attempt_id, gateway=gateway)

    assert retry.id == kept.id and retry.status == RetryStatus.DECLINED
    assert {c["idempotency_key"] for c in confirms(stripe_sandbox)} == {f"retry-{attempt_id}-0"}


def test_a_refusal_by_stripe_is_an_error_not_tried_again(stripe_sandbox, make_org, make_transaction, gateway):
    card = failed_payment(stripe_sandbox, INSUFFICIENT)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, (card[0], card[1], "pm_gone"))

    retry = run(attempt_id, gateway=gateway)

    assert retry.status == RetryStatus.ERROR and retry.finished_at is not None
    assert "No such" in (retry.message or "")
    assert summaries(txn_id)[0].startswith("Card retry failed at Stripe")


def test_the_job_runs_the_step(app, stripe_sandbox, make_org, make_transaction, rq_worker):
    card = failed_payment(stripe_sandbox, INSUFFICIENT)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)
    _db.session.remove()

    assert jobs.queue_retry_card(attempt_id, 3) is True
    assert jobs.queue_retry_card(attempt_id, 3) is False  # once per step
    rq_worker()

    [retry] = retries_of(txn_id)
    assert (retry.step, retry.status) == (3, RetryStatus.DECLINED)


def test_an_unknown_attempt_or_a_negative_step_is_refused(db, gateway):
    with pytest.raises(NoSuchAttempt) as unknown:
        retries.retry_card(_db.session, 999_999, 0, now=utcnow(), gateway=gateway)
    assert unknown.value.status == 404 and "999999" in unknown.value.message
    with pytest.raises(Refused) as negative:
        retries.retry_card(_db.session, 1, -1, now=utcnow(), gateway=gateway)
    assert negative.value.field == "step" and negative.value.status == 422


def test_after_a_retry_charged_the_card_nothing_else_may_charge_it(
    stripe_sandbox, make_org, make_transaction, gateway
):
    """The webhook is on its way: the pay page, another retry and the reminders all hold off."""
    card = failed_payment(stripe_sandbox, VISA)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)
    assert run(attempt_id, gateway=gateway).status == RetryStatus.SUCCEEDED
    txn = reload(Transaction, txn_id)
    actor = Actor.system(txn.organization_id, "customer")

    with pytest.raises(PaymentRefused) as refused:
        checkout.create_checkout_session(
            _db.session, gateway, txn, actor, checkout.CheckoutRequest(action="b")
        )
    assert refused.value.status == 409 and "received" in refused.value.message
    _db.session.rollback()
    assert "an earlier card retry charged it" in _skip_reason(
        attempt_id, gateway, step=1, now=utcnow() + timedelta(days=2)
    )
    assert paying.paid_at_stripe(_db.session, [txn_id]) == {txn_id}
    assert len(confirms(stripe_sandbox)) == 1


# --- never: the rules, each recorded as a skip -------------------------------------------------


def _skip_reason(attempt_id: int, gateway: StripeGateway, step: int = 0, **kwargs: Any) -> str:
    retry = run(attempt_id, step, gateway=gateway, **kwargs)
    assert retry.status == RetryStatus.SKIPPED and retry.finished_at is not None, retry
    return retry.message or ""


@pytest.mark.parametrize(
    "code", ["stolen_card", "lost_card", "fraudulent", "pickup_card", "security_violation"]
)
def test_never_a_do_not_contact_decline(stripe_sandbox, make_org, make_transaction, gateway, code):
    card = failed_payment(stripe_sandbox, INSUFFICIENT)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card, failure_code=code)

    assert "forbid retrying" in _skip_reason(attempt_id, gateway)
    assert confirms(stripe_sandbox) == []
    assert summaries(txn_id)[0].startswith("Card retry skipped:")


@pytest.mark.parametrize("code", ["expired_card", "incorrect_number", "duplicate_transaction"])
def test_never_a_decline_the_same_card_would_repeat(
    stripe_sandbox, make_org, make_transaction, gateway, code
):
    card = failed_payment(stripe_sandbox, INSUFFICIENT)
    _txn, attempt_id = retry_setup(make_org, make_transaction, card, failure_code=code)

    assert code in _skip_reason(attempt_id, gateway)
    assert confirms(stripe_sandbox) == []


@pytest.mark.parametrize(
    "status", [TransactionStatus.RECOVERED, TransactionStatus.REFUNDED, TransactionStatus.CANCELLED]
)
def test_never_after_payment_or_closing(stripe_sandbox, make_org, make_transaction, gateway, status):
    card = failed_payment(stripe_sandbox, VISA)
    _txn, attempt_id = retry_setup(make_org, make_transaction, card, status=status)

    assert f"the transaction is {status}" in _skip_reason(attempt_id, gateway)
    assert confirms(stripe_sandbox) == []


def test_never_once_the_recovery_ended(stripe_sandbox, make_org, make_transaction, gateway):
    card = failed_payment(stripe_sandbox, VISA)
    _txn, attempt_id = retry_setup(make_org, make_transaction, card)
    attempt = reload(RecoveryAttempt, attempt_id)
    attempt.status = AttemptStatus.CANCELLED
    _db.session.commit()

    assert "the recovery is cancelled" in _skip_reason(attempt_id, gateway)


def test_never_when_the_customer_paid_at_checkout_meanwhile(
    stripe_sandbox, make_org, make_transaction, gateway
):
    card = failed_payment(stripe_sandbox, VISA)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)
    txn = reload(Transaction, txn_id)
    _db.session.add(
        CheckoutSession(
            organization_id=txn.organization_id,
            transaction_id=txn_id,
            idempotency_key="k-paid",
            request_fingerprint="x",
            stripe_session_id="cs_test_paid",
            status=CheckoutStatus.COMPLETE,
            payment_status="paid",
            amount=txn.amount,
            currency=txn.currency,
            expires_at=utcnow() + timedelta(hours=1),
        )
    )
    _db.session.commit()

    assert "the customer has paid" in _skip_reason(attempt_id, gateway)
    assert confirms(stripe_sandbox) == []


@pytest.mark.parametrize(
    "missing", ["stripe_payment_intent_id", "stripe_customer_id", "stripe_payment_method_id"]
)
def test_never_without_a_reusable_card(stripe_sandbox, make_org, make_transaction, gateway, missing):
    card = failed_payment(stripe_sandbox, VISA)
    _txn, attempt_id = retry_setup(make_org, make_transaction, card, **{missing: None})

    assert "no saved card" in _skip_reason(attempt_id, gateway)


def test_never_while_a_payment_link_is_open(stripe_sandbox, make_org, make_transaction, gateway):
    card = failed_payment(stripe_sandbox, VISA)
    _txn, attempt_id = retry_setup(make_org, make_transaction, card, stripe_payment_link_id="plink_1")

    assert "Payment Link" in _skip_reason(attempt_id, gateway)


# --- the card networks' limits, at the times they count ----------------------------------------


def test_one_try_per_card_per_24_hours_counting_the_failure(
    stripe_sandbox, make_org, make_transaction, gateway
):
    now = utcnow()
    card = failed_payment(stripe_sandbox, INSUFFICIENT)
    _txn, attempt_id = retry_setup(make_org, make_transaction, card, failed_at=now - timedelta(hours=23))

    assert "less than 24 hours" in _skip_reason(attempt_id, gateway, now=now)
    # A day after the failure, the next step tries; the one after, an hour later, may not.
    assert run(attempt_id, 1, now=now + timedelta(hours=1, minutes=1), gateway=gateway).status == "declined"
    assert "less than 24 hours" in _skip_reason(attempt_id, gateway, step=2, now=now + timedelta(hours=2))
    assert run(attempt_id, 3, now=now + timedelta(hours=25, minutes=2), gateway=gateway).status == "declined"


def test_the_same_card_counts_across_transactions(stripe_sandbox, make_org, make_transaction, gateway):
    now = utcnow()
    card = failed_payment(stripe_sandbox, INSUFFICIENT)
    org = make_org()
    _a, first = retry_setup(make_org, make_transaction, card, org=org)
    _b, second = retry_setup(make_org, make_transaction, card, org=org)

    assert run(first, now=now, gateway=gateway).status == RetryStatus.DECLINED
    assert "less than 24 hours" in _skip_reason(second, gateway, now=now + timedelta(hours=3))


def test_at_most_eight_retries_per_card_in_30_days(stripe_sandbox, make_org, make_transaction, gateway):
    now = utcnow()
    card = failed_payment(stripe_sandbox, INSUFFICIENT)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card, failed_at=now - timedelta(days=40))
    txn = reload(Transaction, txn_id)
    # Earlier retries of the card, one every three days, the oldest out of the window.
    for n in range(MAX_RETRIES_PER_WINDOW + 1):
        _db.session.add(
            CardRetry(
                organization_id=txn.organization_id,
                transaction_id=txn_id,
                payment_intent_id=card[0],
                payment_method_id=card[2],
                idempotency_key=f"earlier-{txn_id}-{n}",
                status=RetryStatus.DECLINED,
                created_at=now - timedelta(days=2 + 3.5 * n),
            )
        )
    _db.session.commit()
    assert MAX_RETRIES_PER_WINDOW == 8  # Visa allows 15 in 30 days; Mastercard 10 a day

    assert "our limit (8)" in _skip_reason(attempt_id, gateway, now=now)
    # Three days on, the oldest two in the window have aged out: one more try.
    assert run(attempt_id, 1, now=now + timedelta(days=4), gateway=gateway).status == RetryStatus.DECLINED


# --- the pay page waits for a retry ------------------------------------------------------------


def test_the_pay_page_refuses_while_a_retry_is_in_flight(stripe_sandbox, make_org, make_transaction, gateway):
    card = failed_payment(stripe_sandbox, VISA)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)
    txn = reload(Transaction, txn_id)
    pending = CardRetry(
        organization_id=txn.organization_id,
        transaction_id=txn_id,
        attempt_id=attempt_id,
        step=0,
        payment_intent_id=card[0],
        payment_method_id=card[2],
        idempotency_key=retries.retry_key(attempt_id, 0),
        status=RetryStatus.PENDING,
        created_at=utcnow(),
    )
    _db.session.add(pending)
    _db.session.commit()
    actor = Actor.system(txn.organization_id, "customer")

    with pytest.raises(PaymentRefused) as refused:
        checkout.create_checkout_session(
            _db.session, gateway, txn, actor, checkout.CheckoutRequest(action="a")
        )
    assert refused.value.status == 409 and "saved card" in refused.value.message
    _db.session.rollback()

    pending = reload(CardRetry, pending.id)
    pending.status, pending.finished_at = RetryStatus.DECLINED, utcnow()
    _db.session.commit()
    made = checkout.create_checkout_session(
        _db.session, gateway, reload(Transaction, txn_id), actor, checkout.CheckoutRequest(action="a")
    )
    assert made.status == CheckoutStatus.OPEN


def test_a_retry_expires_the_open_checkout_session_before_charging(
    stripe_sandbox, make_org, make_transaction, gateway
):
    card = failed_payment(stripe_sandbox, VISA)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)
    actor = Actor.system(reload(Transaction, txn_id).organization_id, "customer")
    record = checkout.create_checkout_session(
        _db.session, gateway, reload(Transaction, txn_id), actor, checkout.CheckoutRequest(action="open")
    )
    _db.session.commit()
    session_id, record_id = record.stripe_session_id, record.id

    retry = run(attempt_id, gateway=gateway)

    assert retry.status == RetryStatus.SUCCEEDED
    assert sandbox_client(stripe_sandbox).v1.checkout.sessions.retrieve(session_id).status == "expired"
    assert reload(CheckoutSession, record_id).status == CheckoutStatus.EXPIRED
    paid = stripe_sandbox.pay(session_id, VISA)
    assert "error" in paid  # the customer can no longer pay it


def test_a_session_the_customer_completed_stops_the_retry(
    stripe_sandbox, make_org, make_transaction, gateway
):
    """Paid at Stripe, the webhook not yet here: the session cannot be expired, so the card is left alone."""
    card = failed_payment(stripe_sandbox, VISA)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)
    actor = Actor.system(reload(Transaction, txn_id).organization_id, "customer")
    record = checkout.create_checkout_session(
        _db.session, gateway, reload(Transaction, txn_id), actor, checkout.CheckoutRequest(action="open")
    )
    _db.session.commit()
    assert stripe_sandbox.pay(record.stripe_session_id, VISA)["status"] == "complete"

    assert "the customer paid at checkout" in _skip_reason(attempt_id, gateway)
    assert confirms(stripe_sandbox) == []
    intent = sandbox_client(stripe_sandbox).v1.payment_intents.retrieve(card[0])
    assert intent.status == "requires_payment_method"
