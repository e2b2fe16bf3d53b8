"""Failed payments imported from Stripe start their recovery by themselves when the organization asks.

Each test posts a Stripe-signed `payment_intent.payment_failed` to the real
endpoint and lets a real RQ worker (burst) process it, start the recovery and
send the first message (to the development outbox).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from recovery.models import (
    AttemptStatus,
    AuditEvent,
    Message,
    Organization,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
)
from tests.fixtures import stripe_events as se


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_WEBHOOK_RETRY_SECONDS": "0,0"}


def failed_payment(org: Organization, **fields: Any) -> dict[str, Any]:
    intent = se.payment_intent(
        None,
        status="requires_payment_method",
        amount=4200,
        currency="usd",
        meta={"organization_id": str(org.id)},
        failure=("card_declined", "insufficient_funds", "Your card has insufficient funds."),
        **({"receipt_email": "buyer@example.com"} | fields),
    )
    return se.event("payment_intent.payment_failed", intent)


def deliver(client: Any, rq_worker: Callable[[], None], evt: dict[str, Any]) -> None:
    response = se.post(client, evt)
    assert response.status_code == 200, response.data
    rq_worker()


def imported(db: Any, org: Organization) -> Transaction:
    db.session.expire_all()
    return db.session.scalars(select(Transaction).where(Transaction.organization_id == org.id)).one()


def attempts(db: Any, transaction: Transaction) -> list[RecoveryAttempt]:
    db.session.expire_all()
    return list(
        db.session.scalars(select(RecoveryAttempt).where(RecoveryAttempt.transaction_id == transaction.id))
    )


def test_an_imported_failure_starts_its_recovery_and_sends_the_first_message(client, db, make_org, rq_worker):
    org = make_org(import_stripe_failures=True, auto_start_recoveries=True, recovery_schedule="0,2")

    deliver(client, rq_worker, failed_payment(org))

    transaction = imported(db, org)
    [attempt] = attempts(db, transaction)
    assert transaction.status == TransactionStatus.RECOVERING
    assert attempt.status == AttemptStatus.NOTIFIED and attempt.schedule == "0,2" and attempt.step == 1
    [message] = db.session.scalars(select(Message).where(Message.attempt_id == attempt.id)).all()
    assert (message.channel, message.recipient, message.status) == ("email", "buyer@example.com", "sent")
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "recovery.started"))
    assert event.transaction_id == transaction.id and event.actor_label == "Automatic recovery"


def test_auto_start_off_imports_without_starting(client, db, make_org, rq_worker):
    org = make_org(import_stripe_failures=True, auto_start_recoveries=False)

    deliver(client, rq_worker, failed_payment(org))

    transaction = imported(db, org)
    assert transaction.status == TransactionStatus.FAILED
    assert attempts(db, transaction) == []


def test_the_same_failure_delivered_again_starts_nothing_more(client, db, make_org, rq_worker):
    org = make_org(import_stripe_failures=True, auto_start_recoveries=True)
    evt = failed_payment(org)
    deliver(client, rq_worker, evt)
    transaction = imported(db, org)
    [attempt] = attempts(db, transaction)
    db.session.get(RecoveryAttempt, attempt.id).transition(AttemptStatus.CANCELLED)
    db.session.commit()

    # The same event again, and a new failure of the same PaymentIntent.
    deliver(client, rq_worker, evt)
    deliver(client, rq_worker, se.event("payment_intent.payment_failed", evt["data"]["object"]))

    assert [a.id for a in attempts(db, transaction)] == [attempt.id]


def test_a_failure_without_contact_details_is_imported_and_the_refusal_noted(client, db, make_org, rq_worker):
    org = make_org(import_stripe_failures=True, auto_start_recoveries=True)

    deliver(client, rq_worker, failed_payment(org, receipt_email=None))

    transaction = imported(db, org)
    assert transaction.status == TransactionStatus.FAILED and attempts(db, transaction) == []
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "recovery.auto_start_refused"))
    assert event.transaction_id == transaction.id
    assert "no email address or phone number" in event.details["reason"]


def test_an_excluded_failure_code_is_not_started(client, db, make_org, rq_worker):
    org = make_org(
        import_stripe_failures=True, auto_start_recoveries=True, excluded_failure_codes="insufficient_funds"
    )

    deliver(client, rq_worker, failed_payment(org))

    transaction = imported(db, org)
    assert attempts(db, transaction) == []
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "recovery.auto_start_refused"))
    assert "excluded" in event.details["reason"]


def test_a_failure_of_a_known_transaction_starts_nothing(client, db, make_org, make_transaction, rq_worker):
    org = make_org(import_stripe_failures=True, auto_start_recoveries=True)
    transaction = make_transaction(org)
    intent = se.payment_intent(
        transaction, status="requires_payment_method", failure=("card_declined", "", "no")
    )

    deliver(client, rq_worker, se.event("payment_intent.payment_failed", intent))

    assert attempts(db, transaction) == []
