"""Paid sessions and payment intents recover a transaction once, in any order of events, on both databases."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select

from recovery.extensions import db as _db
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    CheckoutSession,
    CheckoutStatus,
    Message,
    MessageStatus,
    PaymentFulfilment,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    WebhookState,
)
from recovery.queue import get_queue
from recovery.webhooks import jobs, matching, processing
from tests.fixtures import stripe_events as se
from tests.fixtures.webhooks import (
    deliver,
    reload,
    run_job,
    stored,
    timeline_actions,
    txn_of,
)


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_WEBHOOK_RETRY_SECONDS": "0,0"}


# --- processing: checkout sessions ---------------------------------------------------------


def test_a_paid_session_recovers_the_transaction_once_and_stops_everything_else(client, recovering):
    evt = se.event(
        "checkout.session.completed",
        se.checkout_session(
            txn_of(recovering),
            id=recovering["session_id"],
            payment_intent="pi_paid",
            attempt_id=recovering["attempt_id"],
        ),
    )

    assert deliver(client, evt) == WebhookState.PROCESSED

    txn = reload(Transaction, recovering["txn_id"])
    assert txn.status == TransactionStatus.RECOVERED
    assert txn.recovered_amount == 5000 and txn.recovered_at is not None
    assert txn.stripe_payment_intent_id == "pi_paid"
    attempt = reload(RecoveryAttempt, recovering["attempt_id"])
    assert attempt.status == AttemptStatus.COMPLETED and attempt.completed_at is not None
    assert reload(Message, recovering["message_id"]).status == MessageStatus.CANCELLED
    record = reload(CheckoutSession, recovering["record_id"])
    assert (record.status, record.payment_status, record.stripe_payment_intent_id) == (
        "complete",
        "paid",
        "pi_paid",
    )
    row = stored(evt["id"])
    assert row.organization_id == recovering["org_id"] and row.attempts == 1 and row.processed_at
    assert timeline_actions(recovering["txn_id"]) == ["stripe.payment_recovered"]
    # The close-the-other-ways-to-pay job follows the commit.
    assert any(j.func_name.endswith("close_payment_options") for j in get_queue().jobs)


def test_the_same_event_processed_twice_applies_once(client, recovering):
    evt = se.event(
        "checkout.session.completed", se.checkout_session(txn_of(recovering), id=recovering["session_id"])
    )
    deliver(client, evt)

    outcome = processing.process_event(_db.session, evt["id"], lambda: None)

    assert outcome.ran is False and outcome.state == WebhookState.PROCESSED
    assert stored(evt["id"]).attempts == 1
    assert timeline_actions(recovering["txn_id"]) == ["stripe.payment_recovered"]


def _queued_calls() -> list[tuple[str, tuple[Any, ...]]]:
    return [(job.func_name.rsplit(".", 1)[-1], tuple(job.args)) for job in get_queue().jobs]


def test_a_job_run_again_queues_the_follow_ups_the_queue_lost(client, recovering):
    """Redis failing (or the worker dying) after the commit loses the follow-ups; RQ's retry restores them."""
    evt = se.event(
        "checkout.session.completed", se.checkout_session(txn_of(recovering), id=recovering["session_id"])
    )
    deliver(client, evt)
    get_queue().empty()  # what the queue holds when the enqueue after the commit never happened

    assert run_job(jobs.process_webhook_event, evt["id"]) == WebhookState.PROCESSED

    assert _queued_calls() == [("close_payment_options", (recovering["txn_id"], recovering["session_id"]))]
    assert timeline_actions(recovering["txn_id"]) == ["stripe.payment_recovered"]  # applied once
    assert stored(evt["id"]).attempts == 1


def test_a_job_run_again_for_an_import_queues_its_auto_start_again(client, make_org):
    org_id = make_org(import_stripe_failures=True).id
    intent = se.payment_intent(
        None,
        status="requires_payment_method",
        meta={"organization_id": str(org_id)},
        failure=("card_declined", "insufficient_funds", "Your card has insufficient funds."),
        receipt_email="buyer@example.com",
    )
    # Two failures of one PaymentIntent, both stored before either is applied.
    first, second = (se.event("payment_intent.payment_failed", intent) for _ in range(2))
    for evt in (first, second):
        assert se.post(client, evt).status_code == 200
    run_job(jobs.process_webhook_event, first["id"])  # the second is taken along
    txn_id = _db.session.scalar(select(Transaction.id).where(Transaction.organization_id == org_id))
    assert stored(second["id"]).status == WebhookState.PROCESSED

    get_queue().empty()
    run_job(jobs.process_webhook_event, first["id"])
    assert _queued_calls() == [("start_imported_recovery", (txn_id,))]

    # The second only noted a failure on what the first imported: run again, it queues nothing.
    get_queue().empty()
    run_job(jobs.process_webhook_event, second["id"])
    assert _queued_calls() == []


def test_a_job_run_again_after_its_follow_ups_were_queued_adds_none(client, recovering):
    """Another worker's batch applied the event and queued its follow-ups: no second close job."""
    evt = se.event(
        "checkout.session.completed", se.checkout_session(txn_of(recovering), id=recovering["session_id"])
    )
    deliver(client, evt)
    closing = [("close_payment_options", (recovering["txn_id"], recovering["session_id"]))]
    assert [call for call in _queued_calls() if call[0] == "close_payment_options"] == closing

    run_job(jobs.process_webhook_event, evt["id"])

    assert [call for call in _queued_calls() if call[0] == "close_payment_options"] == closing


def test_a_job_run_again_for_an_event_that_only_noted_queues_nothing(client, recovering):
    evt = se.event(
        "payment_intent.payment_failed",
        se.declined(txn_of(recovering)),
    )
    deliver(client, evt)
    get_queue().empty()

    run_job(jobs.process_webhook_event, evt["id"])

    assert _queued_calls() == []


def test_two_event_ids_for_one_session_fulfil_it_once(client, recovering):
    session = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_intent="pi_once")
    first = se.event("checkout.session.completed", session)
    second = se.event("checkout.session.completed", session)  # Stripe re-sent it under a new id

    assert deliver(client, first) == WebhookState.PROCESSED
    assert deliver(client, second) == WebhookState.PROCESSED

    assert _db.session.scalar(select(func.count()).select_from(PaymentFulfilment)) == 1
    assert timeline_actions(recovering["txn_id"]) == ["stripe.payment_recovered"]


def test_stored_ids_find_the_best_row_first(db, recovering, make_transaction):
    """One query ranks every row that holds one of the object's ids; the order is the matching rule.

    Best first: our session record by session id (0), a transaction by session id (1),
    our session record by PaymentIntent (2), a transaction by PaymentIntent (3),
    a fulfilment by PaymentIntent (4), a transaction by Payment Link (5).
    """
    org = recovering["org"]
    record = db.session.get(CheckoutSession, recovering["record_id"])
    record.stripe_payment_intent_id = "pi_record"
    db.session.commit()
    ours = (recovering["txn_id"], recovering["attempt_id"])
    by_session = make_transaction(
        org,
        stripe_checkout_session_id="cs_only_on_a_transaction",
        stripe_payment_intent_id="pi_record",
        stripe_payment_link_id="plink_a",
    )
    by_intent = make_transaction(org, stripe_payment_intent_id="pi_txn_and_fulfilment")
    fulfilled, fulfilled_too = make_transaction(org), make_transaction(org)
    db.session.add_all(
        PaymentFulfilment(
            organization_id=org.id,
            transaction_id=txn.id,
            stripe_payment_intent_id=intent,
            amount=5000,
            currency="usd",
            source="payment_intent.succeeded",
        )
        for txn, intent in ((fulfilled_too, "pi_txn_and_fulfilment"), (fulfilled, "pi_fulfilment_only"))
    )
    by_link = make_transaction(org, stripe_payment_link_id="plink_b")
    db.session.commit()

    def best(session_id=None, payment_intent_id=None, link_id=None):
        found = matching._by_stored_ids(db.session, session_id, payment_intent_id, link_id)
        return found and (found.transaction.id, found.attempt_id, found.by)

    assert best(recovering["session_id"], "pi_record", "plink_a") == (*ours, "session")  # 0 over 1-5
    assert best("cs_only_on_a_transaction", "pi_record", "plink_b") == (
        by_session.id,
        None,
        "session",
    )  # 1 over 2
    assert best(None, "pi_record", "plink_a") == (*ours, "payment_intent")  # 2 over 3 and 5
    assert best(None, "pi_txn_and_fulfilment", "plink_b") == (
        by_intent.id,
        None,
        "payment_intent",
    )  # 3 over 4
    assert best("cs_unknown", "pi_fulfilment_only", "plink_b") == (
        fulfilled.id,
        None,
        "payment_intent",
    )  # 4 over 5
    assert best(link_id="plink_b") == (by_link.id, None, "payment_link")
    assert best("cs_unknown", "pi_unknown", "plink_unknown") is None
    assert best() is None


def test_the_fulfilment_row_is_a_unique_constraint_not_a_check(db, recovering):
    row = {
        "organization_id": recovering["org_id"],
        "transaction_id": recovering["txn_id"],
        "amount": 5000,
        "currency": "usd",
        "source": "test",
    }
    db.session.add(PaymentFulfilment(**row, stripe_checkout_session_id="cs_a"))
    db.session.commit()
    db.session.add(PaymentFulfilment(**row, stripe_checkout_session_id="cs_b"))

    with pytest.raises(Exception, match=r"(?i)unique"):
        db.session.commit()
    db.session.rollback()


def test_an_unpaid_completed_session_waits_for_async_payment(client, recovering):
    session = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_status="unpaid")

    assert deliver(client, se.event("checkout.session.completed", session)) == WebhookState.PROCESSED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
    assert reload(CheckoutSession, recovering["record_id"]).payment_status == "unpaid"

    failed = se.event("checkout.session.async_payment_failed", session)
    assert deliver(client, failed) == WebhookState.PROCESSED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING

    paid = dict(session, payment_status="paid", payment_intent="pi_async")
    assert (
        deliver(client, se.event("checkout.session.async_payment_succeeded", paid)) == WebhookState.PROCESSED
    )
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERED
    assert timeline_actions(recovering["txn_id"]) == [
        "stripe.checkout_session_awaiting_payment",
        "stripe.async_payment_failed",
        "stripe.payment_recovered",
    ]


def test_an_expired_session_is_noted_and_nothing_regresses(client, recovering):
    session = se.checkout_session(
        txn_of(recovering), id=recovering["session_id"], status="expired", payment_status="unpaid"
    )

    assert deliver(client, se.event("checkout.session.expired", session)) == WebhookState.PROCESSED

    assert reload(CheckoutSession, recovering["record_id"]).status == CheckoutStatus.EXPIRED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
    assert timeline_actions(recovering["txn_id"]) == ["stripe.checkout_session_expired"]


# --- out of order ----------------------------------------------------------------------------


def test_expired_after_completed_leaves_it_recovered(client, recovering):
    paid = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_intent="pi_1")
    deliver(client, se.event("checkout.session.completed", paid, created=int(time.time()) - 10))

    expired = dict(paid, status="expired", payment_status="unpaid")
    deliver(client, se.event("checkout.session.expired", expired))

    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERED
    assert reload(CheckoutSession, recovering["record_id"]).status == CheckoutStatus.COMPLETE


def test_payment_failed_after_succeeded_leaves_it_recovered(client, recovering):
    deliver(client, se.event("payment_intent.succeeded", se.payment_intent(txn_of(recovering), id="pi_both")))
    failed = se.payment_intent(
        txn_of(recovering),
        id="pi_both",
        status="requires_payment_method",
        failure=("card_declined", "insufficient_funds", "No money."),
    )

    assert deliver(client, se.event("payment_intent.payment_failed", failed)) == WebhookState.PROCESSED

    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERED
    assert timeline_actions(recovering["txn_id"]) == [
        "stripe.payment_succeeded",
        "stripe.payment_recovered",
        "stripe.payment_failed",
    ]


@pytest.mark.parametrize("order", ["intent first", "session first"])
def test_intent_succeeded_and_session_completed_in_either_order_fulfil_once(client, recovering, order):
    txn = txn_of(recovering)
    intent = se.event("payment_intent.succeeded", se.payment_intent(txn, id="pi_pair"))
    session = se.event(
        "checkout.session.completed",
        se.checkout_session(txn, id=recovering["session_id"], payment_intent="pi_pair"),
    )
    pair = [intent, session] if order == "intent first" else [session, intent]

    for evt in pair:
        assert deliver(client, evt) == WebhookState.PROCESSED

    fulfilment = _db.session.scalar(select(PaymentFulfilment))
    assert fulfilment is not None
    assert (fulfilment.stripe_payment_intent_id, fulfilment.stripe_checkout_session_id) == (
        "pi_pair",
        recovering["session_id"],
    )
    assert timeline_actions(recovering["txn_id"]).count("stripe.payment_recovered") == 1
    assert reload(CheckoutSession, recovering["record_id"]).status == CheckoutStatus.COMPLETE


def test_a_refund_before_the_payment_events_ends_refunded(client, recovering):
    refund = se.event("charge.refunded", se.charge(txn_of(recovering), payment_intent="pi_r", refunded=5000))
    # The charge names no transaction: only the PaymentIntent, known from our session record.
    record = reload(CheckoutSession, recovering["record_id"])
    record.stripe_payment_intent_id = "pi_r"
    _db.session.commit()

    assert deliver(client, refund) == WebhookState.PROCESSED
    session = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_intent="pi_r")
    assert deliver(client, se.event("checkout.session.completed", session)) == WebhookState.PROCESSED

    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.REFUNDED


def test_a_full_refund_of_a_recovered_transaction_and_a_partial_one(client, recovering):
    deliver(client, se.event("payment_intent.succeeded", se.payment_intent(txn_of(recovering), id="pi_ref")))

    partial = se.event(
        "charge.refunded", se.charge(txn_of(recovering), payment_intent="pi_ref", refunded=1000)
    )
    assert deliver(client, partial) == WebhookState.PROCESSED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERED

    full = se.event("charge.refunded", se.charge(txn_of(recovering), payment_intent="pi_ref", refunded=5000))
    assert deliver(client, full) == WebhookState.PROCESSED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.REFUNDED
    assert timeline_actions(recovering["txn_id"])[-2:] == ["stripe.partially_refunded", "stripe.refunded"]


def test_an_adaptive_pricing_session_counts_in_the_merchants_currency(client, recovering):
    session = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_intent="pi_fx")
    session.update(amount_total=4620, currency="eur")  # what the customer paid, in their currency
    session["currency_conversion"] = {"amount_total": 5000, "amount_subtotal": 5000, "source_currency": "usd"}

    assert deliver(client, se.event("checkout.session.completed", session)) == WebhookState.PROCESSED

    txn = reload(Transaction, recovering["txn_id"])
    assert (txn.status, txn.recovered_amount, txn.currency) == (TransactionStatus.RECOVERED, 5000, "usd")
    assert "stripe.payment_amount_differs" not in timeline_actions(recovering["txn_id"])


def test_a_partial_capture_recovers_with_what_arrived_and_says_so(client, recovering):
    intent = se.payment_intent(txn_of(recovering), id="pi_part")
    intent["amount_received"] = 1000  # of 5000 asked

    assert deliver(client, se.event("payment_intent.succeeded", intent)) == WebhookState.PROCESSED

    txn = reload(Transaction, recovering["txn_id"])
    assert (txn.status, txn.recovered_amount) == (TransactionStatus.RECOVERED, 1000)
    entry = _db.session.scalar(select(AuditEvent).where(AuditEvent.action == "stripe.payment_amount_differs"))
    assert entry.details["summary"] == "Paid $10.00, owed $50.00"


def test_a_succeeded_intent_with_nothing_received_recovers_nothing(client, recovering):
    intent = se.payment_intent(txn_of(recovering), id="pi_empty")
    intent["amount_received"] = 0

    assert deliver(client, se.event("payment_intent.succeeded", intent)) == WebhookState.PROCESSED

    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
    assert timeline_actions(recovering["txn_id"]) == ["stripe.payment_succeeded_empty"]


def test_refunding_a_second_payment_leaves_the_recovery_standing(client, db, recovering):
    """The customer paid twice (the app says "consider a refund"); the merchant refunds the second."""
    other = reload(CheckoutSession, recovering["record_id"])
    db.session.add(
        CheckoutSession(
            organization_id=other.organization_id,
            transaction_id=other.transaction_id,
            idempotency_key=se.new_id("key"),
            request_fingerprint="x",
            stripe_session_id="cs_second",
            status=CheckoutStatus.OPEN,
            amount=other.amount,
            currency=other.currency,
            expires_at=other.expires_at,
        )
    )
    db.session.commit()
    first = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_intent="pi_first")
    second = se.checkout_session(txn_of(recovering), id="cs_second", payment_intent="pi_second")
    deliver(client, se.event("checkout.session.completed", first))
    deliver(client, se.event("checkout.session.completed", second))
    assert timeline_actions(recovering["txn_id"])[-1] == "stripe.duplicate_payment"

    refund = se.charge(txn_of(recovering), payment_intent="pi_second", refunded=5000)
    assert deliver(client, se.event("charge.refunded", refund)) == WebhookState.PROCESSED

    txn = reload(Transaction, recovering["txn_id"])
    assert txn.status == TransactionStatus.RECOVERED and txn.recovered_amount == 5000
    assert timeline_actions(recovering["txn_id"])[-2:] == [
        "stripe.duplicate_payment",
        "stripe.other_payment_refunded",
    ]
    # The first payment's own refund still ends it refunded.
    own = se.charge(txn_of(recovering), payment_intent="pi_first", refunded=5000)
    assert deliver(client, se.event("charge.refunded", own)) == WebhookState.PROCESSED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.REFUNDED
