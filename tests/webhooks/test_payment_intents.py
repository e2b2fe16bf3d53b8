"""Failed payments: noted on the transaction, or imported as new transactions if the organization wants it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from recovery.extensions import db as _db
from recovery.models import (
    AuditEvent,
    Transaction,
    TransactionStatus,
    WebhookState,
)
from tests.fixtures import stripe_events as se
from tests.fixtures.webhooks import (
    deliver,
    reload,
    stored,
    txn_of,
)


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_WEBHOOK_RETRY_SECONDS": "0,0"}


# --- payment intents ---------------------------------------------------------------------------


def test_a_failed_attempt_is_noted_with_its_codes(client, recovering):
    failed = se.payment_intent(
        txn_of(recovering),
        status="requires_payment_method",
        failure=("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    )

    assert deliver(client, se.event("payment_intent.payment_failed", failed)) == WebhookState.PROCESSED

    entry = _db.session.scalar(select(AuditEvent).where(AuditEvent.action == "stripe.payment_failed"))
    assert entry.details["failure_code"] == "card_declined"
    assert entry.details["decline_code"] == "insufficient_funds"
    assert "insufficient funds" in entry.details["summary"]
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING


@pytest.mark.parametrize("how", ["metadata", "connected account"])
def test_an_unknown_failed_payment_becomes_a_transaction_when_import_is_on(client, make_org, how):
    org = make_org(import_stripe_failures=True, stripe_account_id="acct_1Import")
    org_id = org.id
    intent = se.payment_intent(
        None,
        status="requires_payment_method",
        amount=4200,
        currency="eur",
        meta={"organization_id": str(org_id)} if how == "metadata" else {},
        failure=("card_declined", "expired_card", "Your card has expired."),
        receipt_email="Buyer@Example.com",
    )
    evt = se.event("payment_intent.payment_failed", intent)
    if how == "connected account":
        evt["account"] = "acct_1Import"

    assert deliver(client, evt) == WebhookState.PROCESSED

    txn = _db.session.scalar(select(Transaction).where(Transaction.organization_id == org_id))
    assert (txn.transaction_ref, txn.amount, txn.currency, txn.source) == (
        intent["id"],
        4200,
        "eur",
        "stripe",
    )
    assert (txn.failure_code, txn.customer_email, txn.status) == (
        "expired_card",  # the decline_code, more specific than card_declined
        "buyer@example.com",
        "failed",
    )
    assert txn.stripe_payment_intent_id == intent["id"]
    assert stored(evt["id"]).organization_id == org_id

    # A second failure of the same PaymentIntent is noted on it, not imported twice.
    assert deliver(client, se.event("payment_intent.payment_failed", intent)) == WebhookState.PROCESSED
    assert _db.session.scalar(select(func.count()).select_from(Transaction)) == 1


def test_a_connected_accounts_event_never_touches_another_organization(client, make_org, make_transaction):
    """Metadata is the merchant's to write; the connected account is Stripe's word for whose event it is."""
    account_org = make_org(import_stripe_failures=True, stripe_account_id="acct_1Owner")
    other = make_org(import_stripe_failures=True)
    other_id, account_org_id = other.id, account_org.id
    target = make_transaction(other, status=TransactionStatus.RECOVERING)
    target_id = target.id

    paid = se.event("payment_intent.succeeded", se.payment_intent(target))  # metadata names `other`
    paid["account"] = "acct_1Owner"
    assert deliver(client, paid) == WebhookState.UNMATCHED
    assert stored(paid["id"]).last_error.startswith("Refused: the event comes from connected account")
    assert reload(Transaction, target_id).status == TransactionStatus.RECOVERING

    failed = se.event(
        "payment_intent.payment_failed",
        se.payment_intent(
            None,
            status="requires_payment_method",
            meta={"organization_id": str(other_id)},
            failure=("card_declined", "generic_decline", "Declined."),
            receipt_email="someone@example.com",
        ),
    )
    failed["account"] = "acct_1Owner"
    assert deliver(client, failed) == WebhookState.UNMATCHED
    assert "connected account acct_1Owner is linked to organization" in stored(failed["id"]).last_error
    imported = _db.session.scalars(
        select(Transaction.organization_id).where(Transaction.source == "stripe")
    ).all()
    assert imported == [] and account_org_id != other_id


def test_a_failure_processed_after_its_success_imports_no_debt(client, make_org):
    """Stripe does not promise order: the success can be applied first, while nothing matches it yet."""
    org_id = make_org(import_stripe_failures=True).id
    meta = {"organization_id": str(org_id)}
    paid = se.payment_intent(None, id="pi_paid_later", meta=meta)
    failed = se.payment_intent(
        None,
        id="pi_paid_later",
        status="requires_payment_method",
        meta=meta,
        failure=("card_declined", "insufficient_funds", "Your card has insufficient funds."),
        receipt_email="buyer@example.com",
    )

    assert deliver(client, se.event("payment_intent.succeeded", paid)) == WebhookState.UNMATCHED
    assert deliver(client, se.event("payment_intent.payment_failed", failed)) == WebhookState.UNMATCHED

    assert _db.session.scalar(select(func.count()).select_from(Transaction)) == 0


def test_an_unknown_failed_payment_is_unmatched_when_import_is_off(client, make_org):
    org = make_org()
    intent = se.payment_intent(
        None,
        status="requires_payment_method",
        meta={"organization_id": str(org.id)},
        failure=("card_declined", "", ""),
    )

    assert deliver(client, se.event("payment_intent.payment_failed", intent)) == WebhookState.UNMATCHED

    assert _db.session.scalar(select(func.count()).select_from(Transaction)) == 0


def test_intent_succeeded_recovers_the_transaction_its_metadata_names(client, make_transaction):
    txn = make_transaction()
    txn_id = txn.id

    assert (
        deliver(client, se.event("payment_intent.succeeded", se.payment_intent(txn)))
        == WebhookState.PROCESSED
    )

    assert reload(Transaction, txn_id).status == TransactionStatus.RECOVERED
