"""Webhooks against the Stripe sandbox over HTTP, and concurrent processing on PostgreSQL.

- reconciliation recovers a payment whose webhook was never delivered;
- a recovery closes the transaction's other ways to pay (link, open sessions);
- end to end: the sandbox delivers signed events to a live server of the app,
  a real RQ worker processes them, the transaction shows recovered;
- two workers on one event, and two events for one payment, have one effect.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from recovery.audit import Actor
from recovery.extensions import db as _db
from recovery.models import (
    AuditEvent,
    CheckoutSession,
    CheckoutStatus,
    Organization,
    PaymentFulfilment,
    Transaction,
    TransactionStatus,
    WebhookEvent,
    WebhookState,
    utcnow,
)
from recovery.payments import checkout, links
from recovery.payments.gateway import StripeGateway, StripeSettings
from recovery.payments.pages import PaymentPages
from recovery.webhooks import jobs, processing, receiving
from tests.fixtures import stripe_events as se


@pytest.fixture
def app_config(stripe_sandbox: Any, live_port: int) -> dict[str, Any]:
    stripe_sandbox.reset()  # no webhook endpoint: delivery is off unless a test adds one
    return {
        "STRIPE_SECRET_KEY": stripe_sandbox.api_key,
        "STRIPE_API_BASE": stripe_sandbox.base_url,
        "STRIPE_WEBHOOK_SECRET": se.SECRET,
        "BASE_URL": f"http://127.0.0.1:{live_port}",
    }


@pytest.fixture
def gateway(app: Flask) -> StripeGateway:
    return StripeGateway(StripeSettings.from_config(app.config))


def reload(model: type, id_: int) -> Any:
    _db.session.expire_all()
    return _db.session.get(model, id_)


def run_job(job: Any, *args: Any) -> Any:
    """Run an RQ job in this process as the work horse would: one unit of work, committed at its end."""
    return job(*args)


def open_session(gateway: StripeGateway, txn: Transaction, action: str) -> tuple[int, str]:
    record = checkout.create_checkout_session(
        _db.session,
        gateway,
        txn,
        Actor.system(txn.organization_id),
        checkout.CheckoutRequest(action=action),
        pages=PaymentPages("http://127.0.0.1"),
        expires_in=timedelta(hours=2),
    )
    _db.session.commit()
    assert record.stripe_session_id is not None
    return record.id, record.stripe_session_id


def age(record_id: int, minutes: int) -> None:
    record = reload(CheckoutSession, record_id)
    record.created_at = utcnow() - timedelta(minutes=minutes)
    _db.session.commit()


# --- reconciliation -------------------------------------------------------------------


def test_reconciliation_recovers_a_payment_whose_webhook_was_dropped(
    app, gateway, make_transaction, stripe_sandbox, rq_worker
):
    paid_txn = make_transaction()
    other_txn = make_transaction()
    paid_id, other_id = paid_txn.id, other_txn.id
    record_id, session_id = open_session(gateway, paid_txn, "first")
    _fresh_id, fresh_session = open_session(gateway, reload(Transaction, other_id), "fresh")
    stripe_sandbox.pay(session_id, "4242 4242 4242 4242")
    stripe_sandbox.pay(fresh_session, "4242 4242 4242 4242")
    assert stripe_sandbox.deliveries() == []  # no endpoint: the webhooks never leave Stripe
    age(record_id, 11)  # the fresh one is only seconds old: its webhook may still be on the way

    result = run_job(jobs.reconcile_checkout_sessions)

    assert result == {"checked": 1, "recovered": 1, "expired": 0, "errors": 0}
    txn = reload(Transaction, paid_id)
    assert txn.status == TransactionStatus.RECOVERED and txn.recovered_amount == 5000
    assert reload(CheckoutSession, record_id).status == CheckoutStatus.COMPLETE
    assert reload(Transaction, other_id).status == TransactionStatus.FAILED
    entry = _db.session.scalar(select(AuditEvent).where(AuditEvent.action == "stripe.payment_recovered"))
    assert entry.actor_label == "Reconciliation" and entry.webhook_event_id is None

    # The webhook turns up after all: it changes nothing.
    assert run_job(jobs.reconcile_checkout_sessions)["checked"] == 0
    txn = reload(Transaction, paid_id)
    late = se.event(
        "checkout.session.completed",
        se.checkout_session(txn, id=session_id, payment_intent=txn.stripe_payment_intent_id),
    )
    receiving.store_event(_db.session.connection(), late)
    _db.session.commit()
    assert run_job(jobs.process_webhook_event, late["id"]) == WebhookState.PROCESSED
    assert _db.session.scalar(select(func.count()).select_from(PaymentFulfilment)) == 1


def test_reconciliation_follows_an_expired_session(app, gateway, make_transaction, stripe_sandbox):
    txn = make_transaction()
    txn_id = txn.id
    record_id, _session_id = open_session(gateway, txn, "expiring")
    stripe_sandbox.advance_clock(3 * 3600)
    age(record_id, 30)

    assert run_job(jobs.reconcile_checkout_sessions)["expired"] == 1

    assert reload(CheckoutSession, record_id).status == CheckoutStatus.EXPIRED
    assert reload(Transaction, txn_id).status == TransactionStatus.FAILED


def test_a_recovery_closes_the_other_ways_to_pay(
    app, gateway, make_transaction, stripe_sandbox, stripe_client
):
    txn = make_transaction()
    txn_id = txn.id
    links.create_payment_link(_db.session, gateway, txn, Actor.system(txn.organization_id))
    _db.session.commit()
    paid_record, paid_session = open_session(gateway, reload(Transaction, txn_id), "one")
    other_record, other_session = open_session(gateway, reload(Transaction, txn_id), "two")
    stripe_sandbox.pay(paid_session)
    txn = reload(Transaction, txn_id)
    link_id = txn.stripe_payment_link_id
    evt = se.event(
        "checkout.session.completed", se.checkout_session(txn, id=paid_session, payment_intent="pi_x")
    )
    receiving.store_event(_db.session.connection(), evt)
    _db.session.commit()

    run_job(jobs.process_webhook_event, evt["id"])
    closed = run_job(jobs.close_payment_options, txn_id, paid_session)

    assert closed == [link_id, other_session]
    assert stripe_client.v1.payment_links.retrieve(link_id).active is False
    assert stripe_client.v1.checkout.sessions.retrieve(other_session).status == "expired"
    assert reload(CheckoutSession, other_record).status == CheckoutStatus.EXPIRED
    assert reload(CheckoutSession, paid_record).status == CheckoutStatus.COMPLETE
    assert run_job(jobs.close_payment_options, txn_id, paid_session) == []  # safe to run twice


# --- end to end over HTTP ----------------------------------------------------------------------


# `live_port` and `live_server` come from tests/fixtures/browser.py (a plugin).


def wait_for(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def test_end_to_end_the_sandbox_delivers_and_a_worker_recovers(
    app, gateway, make_transaction, signed_in, client, stripe_sandbox, live_server, rq_worker
):
    stripe_sandbox.add_webhook_endpoint(f"{live_server}/v1/payments/stripe/webhooks", se.SECRET)
    txn = make_transaction()
    txn_id = txn.id
    _record_id, session_id = open_session(gateway, txn, "e2e")
    org_id = txn.organization_id

    stripe_sandbox.pay(session_id, "4000 0000 0000 9995")  # declined first
    stripe_sandbox.pay(session_id, "4242 4242 4242 4242")
    wait_for(
        lambda: (
            all(d["state"] == "delivered" for d in stripe_sandbox.deliveries())
            and len(stripe_sandbox.deliveries()) == 3
        )
    )
    types = [e.type for e in _db.session.scalars(select(WebhookEvent).order_by(WebhookEvent.id))]
    assert sorted(types) == [
        "checkout.session.completed",
        "payment_intent.payment_failed",
        "payment_intent.succeeded",
    ]
    _db.session.remove()

    rq_worker()

    txn = reload(Transaction, txn_id)
    assert txn.status == TransactionStatus.RECOVERED
    states = set(_db.session.scalars(select(WebhookEvent.status)))
    assert states == {WebhookState.PROCESSED}
    actions = [
        a
        for a in _db.session.scalars(
            select(AuditEvent.action).where(AuditEvent.transaction_id == txn_id).order_by(AuditEvent.id)
        )
    ]
    assert "stripe.payment_failed" in actions and actions.count("stripe.payment_recovered") == 1

    # Staff see it on the first load of the page.
    signed_in("admin", org=reload(Organization, org_id))
    page = client.get(f"/transactions/{txn_id}").get_data(as_text=True)
    assert "status-recovered" in page and "Recovered" in page


# --- concurrency on PostgreSQL -------------------------------------------------------------------


def _in_threads(app: Flask, work: Any, count: int = 2) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=10)
                results[index] = work(index)
            except BaseException as error:  # surfaced below
                errors.append(error)
            finally:
                _db.session.remove()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return results


@pytest.fixture
def postgres_only(app: Flask) -> None:
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("concurrency is checked on PostgreSQL; SQLite serialises writers anyway")


def test_two_workers_on_one_event_have_one_effect(app, postgres_only, make_transaction):
    txn = make_transaction()
    txn_id = txn.id
    evt = se.event("checkout.session.completed", se.checkout_session(txn, payment_intent="pi_conc"))
    receiving.store_event(_db.session.connection(), evt)
    _db.session.commit()
    _db.session.remove()

    def work(_index: int) -> Any:
        outcome = processing.process_event(_db.session, evt["id"], lambda: None)
        time.sleep(0.2)  # hold the row lock a while: the other worker must wait, then see it done
        _db.session.commit()
        return outcome.ran

    ran = _in_threads(app, work)

    assert sorted(ran) == [False, True]
    assert reload(Transaction, txn_id).status == TransactionStatus.RECOVERED
    assert _db.session.scalar(select(func.count()).select_from(PaymentFulfilment)) == 1
    assert (
        _db.session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "stripe.payment_recovered")
        )
        == 1
    )
    row = _db.session.scalar(select(WebhookEvent).where(WebhookEvent.stripe_event_id == evt["id"]))
    assert row.status == WebhookState.PROCESSED and row.attempts == 1


def test_two_events_for_one_payment_processed_concurrently_fulfil_once(app, postgres_only, make_transaction):
    txn = make_transaction()
    txn_id = txn.id
    session = se.checkout_session(txn, payment_intent="pi_two")
    pair = [
        se.event("checkout.session.completed", session),
        se.event("payment_intent.succeeded", se.payment_intent(txn, id="pi_two")),
    ]
    for evt in pair:
        receiving.store_event(_db.session.connection(), evt)
    _db.session.commit()
    _db.session.remove()

    def work(index: int) -> str:
        outcome = processing.process_event(_db.session, pair[index]["id"], lambda: None)
        time.sleep(0.2)
        _db.session.commit()
        return outcome.state

    assert _in_threads(app, work) == [WebhookState.PROCESSED, WebhookState.PROCESSED]
    assert reload(Transaction, txn_id).status == TransactionStatus.RECOVERED
    assert _db.session.scalar(select(func.count()).select_from(PaymentFulfilment)) == 1
    actions = list(_db.session.scalars(select(AuditEvent.action).where(AuditEvent.transaction_id == txn_id)))
    assert actions.count("stripe.payment_recovered") == 1


def test_two_deliveries_of_one_event_at_once_store_one_receipt(app, postgres_only):
    evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})

    def work(_index: int) -> int:
        return int(se.post(app.test_client(), evt).status_code)

    assert _in_threads(app, work, count=4) == [200, 200, 200, 200]
    assert _db.session.scalar(select(func.count()).select_from(WebhookEvent)) == 1
    from recovery.queue import get_queue

    assert len(get_queue()) == 1
