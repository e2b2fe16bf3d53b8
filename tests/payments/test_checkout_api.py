"""POST /v1/payments/stripe/checkout-sessions through stripe-python to the sandbox, and Stripe failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from recovery.models import (
    AuditEvent,
    CheckoutSession,
    CheckoutStatus,
    Organization,
    Role,
    StripeCustomer,
    TransactionStatus,
    utcnow,
)
from recovery.models.transaction import STATUS_LABELS
from tests.fixtures.payments import CHECKOUT, LINKS, creates, reconfigure, sandbox_client


@pytest.fixture
def app_config(sandbox_app_config: dict[str, Any]) -> dict[str, Any]:
    return sandbox_app_config


# --- POST /v1/payments/stripe/checkout-sessions ------------------------------


def test_create_checkout_session(
    db: Any, org: Organization, make_transaction: Any, create_by_api: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org, transaction_ref="TXN-001", customer_locale="fr-CA")
    before = datetime.now(UTC)
    response = create_by_api(
        transaction,
        amount=5000,
        currency="usd",
        customer_email="Customer@Example.com",
        metadata={"order_id": "ORD-123"},
    )
    after = datetime.now(UTC)
    assert response.status_code == 201, response.json
    body = response.json
    assert set(body) == {"session_id", "payment_intent_id", "checkout_url", "expires_at"}
    assert body["session_id"].startswith("cs_")
    assert body["payment_intent_id"] is None  # current API versions: none until the customer pays
    assert body["checkout_url"].startswith(stripe_sandbox.base_url.rsplit(":", 1)[0])
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    # 24 hours, less the margin kept inside Stripe's bound for clocks that differ.
    # (Counted from some moment of the request, which on a slow machine is not `before`.)
    assert expires - before >= timedelta(hours=23, minutes=57)
    assert expires - after <= timedelta(hours=23, minutes=58)

    # What Stripe really received.
    session = sandbox_client(stripe_sandbox).v1.checkout.sessions.retrieve(body["session_id"])
    assert session.mode == "payment"
    assert session.amount_total == 5000 and session.currency == "usd"
    assert session.client_reference_id == f"recovery:{org.id}:{transaction.id}"
    assert session.metadata is not None
    assert session.metadata.to_dict() == {
        "order_id": "ORD-123",
        "organization_id": str(org.id),
        "transaction_id": str(transaction.id),
        "transaction_ref": "TXN-001",
    }
    assert session.success_url == "http://localhost/pay/success?session_id={CHECKOUT_SESSION_ID}"
    assert session.cancel_url == "http://localhost/pay/cancel"
    assert session.locale == "fr-CA"
    customer = db.session.scalar(select(StripeCustomer).where(StripeCustomer.organization_id == org.id))
    assert customer.email == "customer@example.com"
    assert session.customer == customer.stripe_customer_id

    db.session.refresh(transaction)
    assert transaction.stripe_checkout_session_id == body["session_id"]
    assert transaction.checkout_url == body["checkout_url"]
    assert transaction.stripe_customer_id == customer.stripe_customer_id
    audit = db.session.scalar(
        select(AuditEvent).where(AuditEvent.action == "stripe.checkout_session_created")
    )
    assert audit.actor_api_token_id is not None and audit.actor_label == "API token operator token"
    assert audit.target_id == body["session_id"]
    timing = response.headers["Server-Timing"]
    assert timing.startswith("app;dur=") and "stripe;dur=" in timing


def test_checkout_session_payment_intent_metadata_is_ours(
    org: Organization, make_transaction: Any, create_by_api: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org)
    body = create_by_api(transaction).json
    paid = stripe_sandbox.pay(body["session_id"], "4242424242424242")
    intent = sandbox_client(stripe_sandbox).v1.payment_intents.retrieve(paid["payment_intent"])
    assert intent.metadata is not None
    assert intent.metadata["transaction_id"] == str(transaction.id)
    assert intent.metadata["organization_id"] == str(org.id)


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"transaction_ref": "NOPE-1"}, 404, None),
        ({}, 422, "transaction_ref"),
        ({"transaction_ref": "TXN-A", "amount": 4999}, 422, "amount"),
        ({"transaction_ref": "TXN-A", "amount": -5}, 422, "amount"),
        ({"transaction_ref": "TXN-A", "amount": 50.0}, 422, "amount"),
        ({"transaction_ref": "TXN-A", "currency": "eur"}, 422, "currency"),
        ({"transaction_ref": "TXN-A", "customer_email": "not-an-email"}, 422, "customer_email"),
        ({"transaction_ref": "TXN-A", "metadata": ["x"]}, 422, "metadata"),
        ({"transaction_ref": "TXN-A", "metadata": {"transaction_id": "1"}}, 422, "metadata"),
        ({"transaction_ref": "TXN-A", "metadata": {"k": "x" * 501}}, 422, "metadata"),
        ({"transaction_ref": "TXN-A", "surprise": 1}, 422, "surprise"),
    ],
)
def test_create_checkout_session_refuses_bad_input(
    client: FlaskClient,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
    payload: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    make_transaction(org, transaction_ref="TXN-A", amount=5000, currency="usd")
    response = client.post(CHECKOUT, json=payload, headers=token_for(org))
    assert response.status_code == status, response.json
    error = response.json["error"]
    assert error["message"]
    if status == 404:
        assert error["message"] == "Transaction not found"
    if field:
        assert field in error["fields"]
    assert creates(stripe_sandbox) == []


def test_other_organizations_transaction_is_not_found(
    org: Organization, make_org: Any, make_transaction: Any, token_for: Any, create_by_api: Any
) -> None:
    other = make_transaction(make_org(), transaction_ref="THEIRS-1")
    for path in (CHECKOUT, LINKS):
        response = create_by_api(other, path=path, headers=token_for(org))
        assert response.status_code == 404
        assert response.json["error"]["message"] == "Transaction not found"


@pytest.mark.parametrize("status", [TransactionStatus.RECOVERED, TransactionStatus.CANCELLED])
def test_closed_transaction_offers_no_payment(
    org: Organization, make_transaction: Any, create_by_api: Any, status: str
) -> None:
    transaction = make_transaction(org, status=status)
    for path in (CHECKOUT, LINKS):
        response = create_by_api(transaction, path=path)
        assert response.status_code == 409
        # A closed transaction is `cancelled` in the API, "closed" in words.
        assert STATUS_LABELS[status] in response.json["error"]["message"]


def test_an_amount_stripe_cannot_charge_is_refused_before_asking_stripe(
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    # 5.124 KWD: Stripe takes three-decimal currencies only in whole tens of fils.
    make_transaction(org, transaction_ref="KWD-1", amount=5124, currency="kwd")
    headers = token_for(org)
    for path in (CHECKOUT, LINKS):
        response = client.post(path, json={"transaction_ref": "KWD-1"}, headers=headers)
        assert response.status_code == 422, response.json
        error = response.json["error"]
        assert (
            error["message"]
            == "Stripe charges KWD only in steps of 0.010, so KWD5.124 cannot be collected as it is."
        )
        assert set(error["fields"]) == {"amount"}
    assert stripe_sandbox.requests() == []
    assert db.session.scalar(select(func.count()).select_from(CheckoutSession)) == 0

    make_transaction(org, transaction_ref="KWD-2", amount=5120, currency="kwd")
    response = client.post(CHECKOUT, json={"transaction_ref": "KWD-2"}, headers=headers)
    assert response.status_code == 201, response.json


def test_viewer_token_cannot_create(
    org: Organization, make_transaction: Any, token_for: Any, create_by_api: Any
) -> None:
    transaction = make_transaction(org)
    for path in (CHECKOUT, LINKS):
        response = create_by_api(transaction, path=path, headers=token_for(org, Role.VIEWER))
        assert response.status_code == 403


def test_no_token_is_401(client: FlaskClient) -> None:
    assert client.post(CHECKOUT, json={"transaction_ref": "X"}).status_code == 401
    assert client.get("/v1/payments/stripe/sessions/cs_test_x/status").status_code == 401


# --- Stripe failures -----------------------------------------------------------


@pytest.mark.parametrize("app_config", [{"STRIPE_SECRET_KEY": ""}])
def test_missing_key_is_503(org: Organization, make_transaction: Any, create_by_api: Any) -> None:
    transaction = make_transaction(org)
    for path in (CHECKOUT, LINKS):
        response = create_by_api(transaction, path=path)
        assert response.status_code == 503
        assert response.json["error"]["message"] == "Stripe API key not configured"


def test_creates_are_logged_with_their_ids(
    org: Organization, make_transaction: Any, token_for: Any, create_by_api: Any
) -> None:
    import io
    import json
    import logging

    transaction = make_transaction(org, amount=2500, currency="eur")
    headers = token_for(org)
    root = logging.getLogger()
    handler = root.handlers[0]
    buffer = io.StringIO()
    old_stream, old_level = handler.setStream(buffer), root.level  # type: ignore[attr-defined]
    root.setLevel(logging.INFO)
    try:
        session = create_by_api(transaction, headers=headers).json
        link = create_by_api(transaction, path=LINKS, headers=headers).json
    finally:
        handler.setStream(old_stream)  # type: ignore[attr-defined]
        root.setLevel(old_level)
    events = {line["event"]: line for line in map(json.loads, buffer.getvalue().splitlines())}
    created = events["stripe_checkout_session_created"]
    assert (created["session_id"], created["transaction_ref"]) == (
        session["session_id"],
        transaction.transaction_ref,
    )
    assert (created["amount"], created["currency"]) == (2500, "eur")
    assert created["request_id"]
    assert events["stripe_payment_link_created"]["payment_link_id"] == link["payment_link_id"]


def test_wrong_key_is_a_clear_500(
    app: Flask, org: Organization, make_transaction: Any, create_by_api: Any
) -> None:
    reconfigure(app, STRIPE_SECRET_KEY="sk_test_wrong_key_123456")
    transaction = make_transaction(org)
    for path in (CHECKOUT, LINKS):
        response = create_by_api(transaction, path=path)
        assert response.status_code == 500
        assert response.json["error"] == {
            "type": "stripe_authentication",
            "message": "Stripe rejected the API key: check STRIPE_SECRET_KEY.",
        }


def test_a_request_refused_for_our_key_goes_through_once_the_key_is_fixed(
    app: Flask, org: Organization, make_transaction: Any, token_for: Any, create_by_api: Any
) -> None:
    """Stripe runs nothing for a rejected key, so a repeat with the same Idempotency-Key is a new try."""
    good_key = app.config["STRIPE_SECRET_KEY"]
    reconfigure(app, STRIPE_SECRET_KEY="sk_test_wrong_key_123456")
    transaction = make_transaction(org, customer_email=None)  # the session create is the first call
    headers = token_for(org, **{"Idempotency-Key": "order-88"})
    assert create_by_api(transaction, headers=headers).status_code == 500

    reconfigure(app, STRIPE_SECRET_KEY=good_key)
    response = create_by_api(transaction, headers=headers)

    assert response.status_code == 201, response.json
    assert response.json["session_id"].startswith("cs_test_")


@pytest.mark.parametrize(
    ("fault", "status", "kind"), [(400, 422, "stripe_invalid_request"), (402, 402, "stripe_card_error")]
)
def test_a_repeat_of_a_refused_request_gets_the_same_answer(
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    create_by_api: Any,
    stripe_sandbox: Any,
    fault: int,
    status: int,
    kind: str,
) -> None:
    # Stripe keeps a refusal under the key; so do we, with its status, as Stripe replays it.
    transaction = make_transaction(org, customer_email=None)
    headers = token_for(org, **{"Idempotency-Key": "order-77"})
    stripe_sandbox.fault(status=fault)
    first = create_by_api(transaction, headers=headers)
    assert first.status_code == status, first.json
    sent = len(stripe_sandbox.requests())

    again = create_by_api(transaction, headers=headers)

    assert (again.status_code, again.json) == (first.status_code, first.json)
    assert again.json["error"]["type"] == kind
    assert len(stripe_sandbox.requests()) == sent  # answered from our record, Stripe not asked


def test_a_request_sent_again_long_after_it_was_reserved_asks_for_a_fresh_expiry(
    app: Flask,
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    create_by_api: Any,
    stripe_sandbox: Any,
) -> None:
    # Refused for our key, then sent again once the key is fixed, 28 minutes on:
    # the reserved expiry would leave Stripe less than its 30 minutes.
    reconfigure(app, STRIPE_CHECKOUT_EXPIRES_MINUTES=30)
    good_key = app.config["STRIPE_SECRET_KEY"]
    reconfigure(app, STRIPE_SECRET_KEY="sk_test_wrong_key_123456")
    transaction = make_transaction(org, customer_email=None)
    headers = token_for(org, **{"Idempotency-Key": "order-99"})
    assert create_by_api(transaction, headers=headers).status_code == 500
    reservation = db.session.scalar(select(CheckoutSession))
    reservation.expires_at = utcnow() + timedelta(minutes=4)
    db.session.commit()
    reconfigure(app, STRIPE_SECRET_KEY=good_key)

    response = create_by_api(transaction, headers=headers)

    assert response.status_code == 201, response.json
    stripe_session = sandbox_client(stripe_sandbox).v1.checkout.sessions.retrieve(response.json["session_id"])
    assert stripe_session.expires_at - stripe_session.created >= 30 * 60
    assert create_by_api(transaction, headers=headers).json == response.json  # and it stays
    assert db.session.scalar(select(func.count()).select_from(CheckoutSession)) == 1


def test_retries_on_500_then_succeeds_with_one_key(
    org: Organization, make_transaction: Any, create_by_api: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org, customer_email=None)
    stripe_sandbox.fault(status=500, count=2)
    response = create_by_api(transaction)
    assert response.status_code == 201, response.json
    tries = creates(stripe_sandbox)
    assert [t["status"] for t in tries] == [500, 500, 200]
    assert len({t["idempotency_key"] for t in tries}) == 1
    assert tries[0]["idempotency_key"].startswith(f"recovery-org{org.id}-txn{transaction.id}-checkout-")


def test_stripe_down_is_502_and_the_retry_gets_one_session(
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    create_by_api: Any,
    stripe_sandbox: Any,
) -> None:
    transaction = make_transaction(org, customer_email=None)
    headers = token_for(org, **{"Idempotency-Key": "order-77-try"})
    stripe_sandbox.fault(status=500, count=3)  # the first try and both retries
    response = create_by_api(transaction, headers=headers)
    assert response.status_code == 502
    assert response.json["error"]["type"] == "stripe_api_error"
    pending = db.session.scalar(select(CheckoutSession))
    assert pending.status == CheckoutStatus.PENDING  # retryable: the reservation stays open

    again = create_by_api(transaction, headers=headers)
    assert again.status_code == 201
    assert len({t["idempotency_key"] for t in creates(stripe_sandbox)}) == 1
    assert db.session.scalar(select(CheckoutSession.stripe_session_id)) == again.json["session_id"]


def test_rate_limit_is_503_and_retryable(
    db: Any, org: Organization, make_transaction: Any, create_by_api: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org, customer_email=None)
    stripe_sandbox.fault(status=429, count=3)
    response = create_by_api(transaction)
    assert response.status_code == 503
    assert response.json["error"]["type"] == "stripe_rate_limited"
    assert "try again" in response.json["error"]["message"]
    assert db.session.scalar(select(CheckoutSession.status)) == CheckoutStatus.PENDING
    assert create_by_api(transaction).status_code == 201
