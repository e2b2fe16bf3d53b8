"""Card retries end to end: the sandbox's signed webhooks, our receiver on a live server, a real RQ worker.

A failure Stripe reports keeps its saved card; a retry that succeeds recovers
the transaction through the webhook as any payment does; and a retry racing
the customer's own payment never charges twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import select

from recovery.audit import Actor
from recovery.demo import seed
from recovery.extensions import db as _db
from recovery.models import (
    AttemptStatus,
    Organization,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    WebhookEvent,
    WebhookState,
    utcnow,
)
from recovery.models.card_retry import RetryStatus
from recovery.payments import checkout, retries
from recovery.payments.gateway import StripeGateway, StripeSettings
from recovery.payments.rules import PaymentRefused
from tests.fixtures import stripe_events as se
from tests.payments.card_retry_helpers import (
    INSUFFICIENT,
    VISA,
    failed_payment,
    reload,
    retries_of,
    retry_setup,
    sandbox_client,
    summaries,
)


@pytest.fixture
def app_config(stripe_sandbox: Any, live_port: int) -> dict[str, Any]:
    stripe_sandbox.reset()
    return {
        "STRIPE_SECRET_KEY": stripe_sandbox.api_key,
        "STRIPE_API_BASE": stripe_sandbox.base_url,
        "STRIPE_WEBHOOK_SECRET": se.SECRET,
        "BASE_URL": f"http://127.0.0.1:{live_port}",
    }


@pytest.fixture
def gateway(app: Flask) -> StripeGateway:
    return StripeGateway(StripeSettings.from_config(app.config))


@pytest.fixture
def webhooks(stripe_sandbox: Any, live_server: str, rq_worker: Callable[[], None]) -> Callable[[], None]:
    """Deliver what the sandbox sent to our receiver, then let a real worker process it."""
    stripe_sandbox.add_webhook_endpoint(f"{live_server}/v1/payments/stripe/webhooks", se.SECRET)

    def settle() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(d["state"] == "delivered" for d in stripe_sandbox.deliveries()):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"not delivered: {stripe_sandbox.deliveries()}")
        _db.session.remove()
        rq_worker()

    return settle


def test_a_failure_stripe_reports_keeps_its_saved_card(stripe_sandbox, make_org, webhooks, gateway):
    org = make_org(import_stripe_failures=True)
    org_id = org.id
    intent_id, customer_id, pm_id = failed_payment(
        stripe_sandbox, INSUFFICIENT, metadata={"organization_id": str(org_id)}
    )

    webhooks()

    txn = _db.session.scalar(select(Transaction).where(Transaction.organization_id == org_id))
    assert (txn.stripe_payment_intent_id, txn.stripe_customer_id, txn.stripe_payment_method_id) == (
        intent_id,
        customer_id,
        pm_id,
    )
    assert txn.failure_code == "insufficient_funds" and txn.decline_category == "retry_later"


def test_a_successful_retry_recovers_the_transaction_through_the_webhook(
    stripe_sandbox, make_org, make_transaction, webhooks, gateway
):
    card = failed_payment(stripe_sandbox, VISA)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)

    retry = retries.retry_card(_db.session, attempt_id, 0, now=utcnow(), gateway=gateway)
    _db.session.commit()
    assert retry.status == RetryStatus.SUCCEEDED
    webhooks()

    txn = reload(Transaction, txn_id)
    assert txn.status == TransactionStatus.RECOVERED and txn.recovered_amount == 5000
    assert reload(RecoveryAttempt, attempt_id).status == AttemptStatus.COMPLETED
    assert summaries(txn_id, "stripe.payment_recovered") != []
    states = set(_db.session.scalars(select(WebhookEvent.status)))
    assert states == {WebhookState.PROCESSED}


def test_a_declined_retry_is_on_the_timeline_and_its_event_changes_nothing_more(
    stripe_sandbox, make_org, make_transaction, webhooks, gateway
):
    card = failed_payment(stripe_sandbox, INSUFFICIENT)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card, failure_code="card_declined")

    retries.retry_card(_db.session, attempt_id, 0, now=utcnow(), gateway=gateway)
    _db.session.commit()
    webhooks()

    txn = reload(Transaction, txn_id)
    assert (txn.status, txn.failure_code) == (TransactionStatus.RECOVERING, "insufficient_funds")
    assert summaries(txn_id) == ["Card retry declined: insufficient funds"]


# --- the race: the customer pays while the card is retried -------------------------------------


@pytest.fixture
def postgres_only(app: Flask) -> None:
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("the race is checked on PostgreSQL (row locks); SQLite serialises writers anyway")


def _together(app: Flask, *work: Callable[[], Any]) -> list[Any]:
    """Run each piece of work in its own thread and app context, released at the same moment."""
    barrier = threading.Barrier(len(work))
    results: list[Any] = [None] * len(work)

    def run(index: int) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=10)
                results[index] = work[index]()
            except Exception as error:
                results[index] = error
            finally:
                _db.session.remove()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.usefixtures("postgres_only")
@pytest.mark.parametrize("how", ["session already open", "opens the pay page"])
def test_a_retry_and_the_customers_payment_never_both_charge(
    app, stripe_sandbox, make_org, make_transaction, webhooks, gateway, how
):
    # Together (either may win), and each side a second late once (the other wins).
    rounds = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0)]  # (customer late, retry late)
    winners = []
    org = make_org()
    org_id = org.id
    for late, retry_late in rounds:
        card = failed_payment(stripe_sandbox, VISA)  # the saved card would pay
        txn_id, attempt_id = retry_setup(make_org, make_transaction, card, org=reload(Organization, org_id))
        actor = Actor.system(org_id, "customer")
        opened: dict[str, str | None] = {"id": None}

        def open_session(action: str, txn_id: int = txn_id, actor: Actor = actor) -> str | None:
            txn = _db.session.get(Transaction, txn_id)
            record = checkout.create_checkout_session(
                _db.session, gateway, txn, actor, checkout.CheckoutRequest(action=action)
            )
            _db.session.commit()
            return record.stripe_session_id

        if how == "session already open":
            opened["id"] = open_session(f"before-{txn_id}")

        def customer_pays(
            opened: dict[str, str | None] = opened, txn_id: int = txn_id, late: float = late
        ) -> Any:
            time.sleep(late)
            session_id = opened["id"] or open_session(f"page-{txn_id}")
            return stripe_sandbox.pay(session_id, VISA)

        def card_retry(attempt_id: int = attempt_id, retry_late: float = retry_late) -> Any:
            time.sleep(retry_late)
            retry = retries.retry_card(_db.session, attempt_id, 0, now=utcnow(), gateway=gateway)
            status = retry.status
            _db.session.commit()
            return status

        paid, retried = _together(app, customer_pays, card_retry)

        customer_charged = isinstance(paid, dict) and paid.get("status") == "complete"
        retry_charged = retried == RetryStatus.SUCCEEDED
        assert customer_charged != retry_charged, (paid, retried)
        winners.append("customer" if customer_charged else "retry")
        if not customer_charged:
            assert isinstance(paid, PaymentRefused) or "error" in paid, paid
        # Stripe's own count: one successful charge for this transaction, whoever made it.
        charges = sandbox_client(stripe_sandbox).v1.charges.list({"limit": 100}).data
        mine = [
            c
            for c in charges
            if c.status == "succeeded"
            and (c.payment_intent == card[0] or c.metadata.to_dict().get("transaction_id") == str(txn_id))
        ]
        assert len(mine) == 1, mine

        webhooks()
        assert reload(Transaction, txn_id).status == TransactionStatus.RECOVERED
        assert [r.status for r in retries_of(txn_id)] == [retried]
    assert winners[1:3] == ["retry", "customer"], winners


# --- the demo ------------------------------------------------------------------------------------


def test_the_demos_saved_card_failures_retry_for_real(stripe_sandbox, db, webhooks, gateway):
    """`make run`: the sandbox starts with the failed payments seed-demo names; each retry does its part."""
    requests.post(f"{stripe_sandbox.base_url}/_sandbox/demo_cards", timeout=10).raise_for_status()
    seed(db.session)
    db.session.commit()
    demo = {
        t.transaction_ref: t
        for t in db.session.scalars(
            select(Transaction).where(Transaction.stripe_payment_method_id.like("pm_demo_retry_%"))
        )
    }
    assert sorted(demo) == ["DEMO-0198", "DEMO-0199", "DEMO-0200"]
    paid_id = demo["DEMO-0199"].id
    outcomes = {}
    for ref, txn in sorted(demo.items()):
        [attempt] = txn.attempts
        assert attempt.action_at(0) == "retry_card"
        outcomes[ref] = retries.retry_card(db.session, attempt.id, 0, now=utcnow(), gateway=gateway).status
        db.session.commit()
    assert outcomes == {
        "DEMO-0198": RetryStatus.DECLINED,
        "DEMO-0199": RetryStatus.SUCCEEDED,
        "DEMO-0200": RetryStatus.REQUIRES_ACTION,
    }
    webhooks()
    assert reload(Transaction, paid_id).status == TransactionStatus.RECOVERED


@pytest.mark.usefixtures("postgres_only")
def test_two_runs_of_one_step_at_once_charge_once(app, stripe_sandbox, make_org, make_transaction, gateway):
    card = failed_payment(stripe_sandbox, VISA)
    txn_id, attempt_id = retry_setup(make_org, make_transaction, card)

    def run() -> Any:
        retry = retries.retry_card(_db.session, attempt_id, 0, now=utcnow(), gateway=gateway)
        _db.session.commit()
        return retry.id

    first, second = _together(app, run, run)

    assert first == second and isinstance(first, int), (first, second)
    assert [r.status for r in retries_of(txn_id)] == [RetryStatus.SUCCEEDED]  # the second waited for it
    charges = sandbox_client(stripe_sandbox).v1.charges.list({"payment_intent": card[0]}).data
    assert [c.status for c in charges].count("succeeded") == 1
