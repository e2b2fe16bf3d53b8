"""Checkout Sessions and Payment Links, through stripe-python over HTTP against the sandbox."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import stripe
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from recovery.audit import Actor
from recovery.models import (
    AuditEvent,
    CheckoutSession,
    CheckoutStatus,
    Organization,
    Role,
    StripeCustomer,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.models.transaction import STATUS_LABELS
from recovery.payments import checkout, gateway, links
from recovery.payments.gateway import StripeGateway, StripeSettings, checkout_locale
from recovery.payments.pages import PaymentPages
from recovery.tokens.services import create_token

CHECKOUT = "/v1/payments/stripe/checkout-sessions"
LINKS = "/v1/payments/stripe/payment-links"


@pytest.fixture
def app_config(stripe_sandbox: Any) -> dict[str, Any]:
    stripe_sandbox.reset()
    return {
        "STRIPE_SECRET_KEY": stripe_sandbox.api_key,
        "STRIPE_API_BASE": stripe_sandbox.base_url,
        "BASE_URL": "http://localhost",
    }


@pytest.fixture
def token_for(db: Any) -> Callable[..., dict[str, str]]:
    """Authorization headers for a new API token of `org` with `role`."""

    def make(org: Organization, role: Role | str = Role.OPERATOR, **headers: str) -> dict[str, str]:
        _token, raw = create_token(
            db.session, org.id, f"{role} token", role, created_by=None, actor=Actor.system(org.id)
        )
        db.session.commit()
        return {"Authorization": f"Bearer {raw}", **headers}

    return make


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    return make_org(name="Acme Shop")


def reconfigure(app: Flask, **config: Any) -> None:
    """Change the app's Stripe settings mid-test: the gateway is built once per app, so build it again."""
    app.config.update(config)
    gateway.init_app(app)


def sandbox_client(stripe_sandbox: Any) -> stripe.StripeClient:
    return stripe.StripeClient(stripe_sandbox.api_key, base_addresses={"api": stripe_sandbox.base_url})


def creates(stripe_sandbox: Any, path: str = "/v1/checkout/sessions") -> list[dict[str, Any]]:
    return [r for r in stripe_sandbox.requests() if r["method"] == "POST" and r["path"] == path]


# --- POST /v1/payments/stripe/checkout-sessions ------------------------------


def test_create_checkout_session(
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    transaction = make_transaction(org, transaction_ref="TXN-001", customer_locale="fr-CA")
    before = datetime.now(UTC)
    response = client.post(
        CHECKOUT,
        json={
            "transaction_ref": "TXN-001",
            "amount": 5000,
            "currency": "usd",
            "customer_email": "Customer@Example.com",
            "metadata": {"order_id": "ORD-123"},
        },
        headers=token_for(org),
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
    client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org)
    body = client.post(
        CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
    ).json
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
    client: FlaskClient, org: Organization, make_org: Any, make_transaction: Any, token_for: Any
) -> None:
    other = make_transaction(make_org(), transaction_ref="THEIRS-1")
    for path, body in (
        (CHECKOUT, {"transaction_ref": other.transaction_ref}),
        (LINKS, {"transaction_ref": "THEIRS-1"}),
    ):
        response = client.post(path, json=body, headers=token_for(org))
        assert response.status_code == 404
        assert response.json["error"]["message"] == "Transaction not found"


@pytest.mark.parametrize("status", [TransactionStatus.RECOVERED, TransactionStatus.CANCELLED])
def test_closed_transaction_offers_no_payment(
    client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any, status: str
) -> None:
    transaction = make_transaction(org, status=status)
    for path in (CHECKOUT, LINKS):
        response = client.post(
            path, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
        )
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
    client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any
) -> None:
    transaction = make_transaction(org)
    for path in (CHECKOUT, LINKS):
        response = client.post(
            path, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org, Role.VIEWER)
        )
        assert response.status_code == 403


def test_no_token_is_401(client: FlaskClient) -> None:
    assert client.post(CHECKOUT, json={"transaction_ref": "X"}).status_code == 401
    assert client.get("/v1/payments/stripe/sessions/cs_test_x/status").status_code == 401


# --- Stripe failures -----------------------------------------------------------


@pytest.mark.parametrize("app_config", [{"STRIPE_SECRET_KEY": ""}])
def test_missing_key_is_503(
    client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any
) -> None:
    transaction = make_transaction(org)
    for path in (CHECKOUT, LINKS):
        response = client.post(
            path, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
        )
        assert response.status_code == 503
        assert response.json["error"]["message"] == "Stripe API key not configured"


def test_creates_are_logged_with_their_ids(
    client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any
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
        session = client.post(
            CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=headers
        ).json
        link = client.post(LINKS, json={"transaction_ref": transaction.transaction_ref}, headers=headers).json
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
    app: Flask, client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any
) -> None:
    reconfigure(app, STRIPE_SECRET_KEY="sk_test_wrong_key_123456")
    transaction = make_transaction(org)
    for path in (CHECKOUT, LINKS):
        response = client.post(
            path, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
        )
        assert response.status_code == 500
        assert response.json["error"] == {
            "type": "stripe_authentication",
            "message": "Stripe rejected the API key: check STRIPE_SECRET_KEY.",
        }


def test_a_request_refused_for_our_key_goes_through_once_the_key_is_fixed(
    app: Flask, client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any
) -> None:
    """Stripe runs nothing for a rejected key, so a repeat with the same Idempotency-Key is a new try."""
    good_key = app.config["STRIPE_SECRET_KEY"]
    reconfigure(app, STRIPE_SECRET_KEY="sk_test_wrong_key_123456")
    transaction = make_transaction(org, customer_email=None)  # the session create is the first call
    headers = token_for(org, **{"Idempotency-Key": "order-88"})
    body = {"transaction_ref": transaction.transaction_ref}
    assert client.post(CHECKOUT, json=body, headers=headers).status_code == 500

    reconfigure(app, STRIPE_SECRET_KEY=good_key)
    response = client.post(CHECKOUT, json=body, headers=headers)

    assert response.status_code == 201, response.json
    assert response.json["session_id"].startswith("cs_test_")


@pytest.mark.parametrize(
    ("fault", "status", "kind"), [(400, 422, "stripe_invalid_request"), (402, 402, "stripe_card_error")]
)
def test_a_repeat_of_a_refused_request_gets_the_same_answer(
    client: FlaskClient,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
    fault: int,
    status: int,
    kind: str,
) -> None:
    # Stripe keeps a refusal under the key; so do we, with its status, as Stripe replays it.
    transaction = make_transaction(org, customer_email=None)
    headers = token_for(org, **{"Idempotency-Key": "order-77"})
    body = {"transaction_ref": transaction.transaction_ref}
    stripe_sandbox.fault(status=fault)
    first = client.post(CHECKOUT, json=body, headers=headers)
    assert first.status_code == status, first.json
    sent = len(stripe_sandbox.requests())

    again = client.post(CHECKOUT, json=body, headers=headers)

    assert (again.status_code, again.json) == (first.status_code, first.json)
    assert again.json["error"]["type"] == kind
    assert len(stripe_sandbox.requests()) == sent  # answered from our record, Stripe not asked


def test_a_request_sent_again_long_after_it_was_reserved_asks_for_a_fresh_expiry(
    app: Flask,
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    # Refused for our key, then sent again once the key is fixed, 28 minutes on:
    # the reserved expiry would leave Stripe less than its 30 minutes.
    reconfigure(app, STRIPE_CHECKOUT_EXPIRES_MINUTES=30)
    good_key = app.config["STRIPE_SECRET_KEY"]
    reconfigure(app, STRIPE_SECRET_KEY="sk_test_wrong_key_123456")
    transaction = make_transaction(org, customer_email=None)
    headers = token_for(org, **{"Idempotency-Key": "order-99"})
    body = {"transaction_ref": transaction.transaction_ref}
    assert client.post(CHECKOUT, json=body, headers=headers).status_code == 500
    reservation = db.session.scalar(select(CheckoutSession))
    reservation.expires_at = utcnow() + timedelta(minutes=4)
    db.session.commit()
    reconfigure(app, STRIPE_SECRET_KEY=good_key)

    response = client.post(CHECKOUT, json=body, headers=headers)

    assert response.status_code == 201, response.json
    stripe_session = sandbox_client(stripe_sandbox).v1.checkout.sessions.retrieve(response.json["session_id"])
    assert stripe_session.expires_at - stripe_session.created >= 30 * 60
    assert client.post(CHECKOUT, json=body, headers=headers).json == response.json  # and it stays
    assert db.session.scalar(select(func.count()).select_from(CheckoutSession)) == 1


def test_retries_on_500_then_succeeds_with_one_key(
    client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org, customer_email=None)
    stripe_sandbox.fault(status=500, count=2)
    response = client.post(
        CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
    )
    assert response.status_code == 201, response.json
    tries = creates(stripe_sandbox)
    assert [t["status"] for t in tries] == [500, 500, 200]
    assert len({t["idempotency_key"] for t in tries}) == 1
    assert tries[0]["idempotency_key"].startswith(f"recovery-org{org.id}-txn{transaction.id}-checkout-")


def test_stripe_down_is_502_and_the_retry_gets_one_session(
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    transaction = make_transaction(org, customer_email=None)
    headers = token_for(org, **{"Idempotency-Key": "order-77-try"})
    stripe_sandbox.fault(status=500, count=3)  # the first try and both retries
    response = client.post(CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=headers)
    assert response.status_code == 502
    assert response.json["error"]["type"] == "stripe_api_error"
    pending = db.session.scalar(select(CheckoutSession))
    assert pending.status == CheckoutStatus.PENDING  # retryable: the reservation stays open

    again = client.post(CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=headers)
    assert again.status_code == 201
    assert len({t["idempotency_key"] for t in creates(stripe_sandbox)}) == 1
    assert db.session.scalar(select(CheckoutSession.stripe_session_id)) == again.json["session_id"]


def test_rate_limit_is_503_and_retryable(
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    transaction = make_transaction(org, customer_email=None)
    stripe_sandbox.fault(status=429, count=3)
    response = client.post(
        CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
    )
    assert response.status_code == 503
    assert response.json["error"]["type"] == "stripe_rate_limited"
    assert "try again" in response.json["error"]["message"]
    assert db.session.scalar(select(CheckoutSession.status)) == CheckoutStatus.PENDING
    assert (
        client.post(
            CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
        ).status_code
        == 201
    )


# --- idempotency -----------------------------------------------------------------


def test_same_request_twice_returns_the_same_session(
    client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org)
    headers = token_for(org)
    first = client.post(CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=headers)
    second = client.post(CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json == second.json
    assert len(creates(stripe_sandbox)) == 1
    other = client.post(
        CHECKOUT,
        json={"transaction_ref": transaction.transaction_ref, "customer_email": "someone.else@example.com"},
        headers=headers,
    )
    assert other.json["session_id"] != first.json["session_id"]


def test_idempotency_key_header_replays(
    client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org)
    headers = token_for(org, **{"Idempotency-Key": "client-key-1"})
    first = client.post(CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=headers)
    second = client.post(CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=headers)
    assert first.json == second.json
    headers["Idempotency-Key"] = "client-key-2"
    third = client.post(CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=headers)
    assert third.json["session_id"] != first.json["session_id"]


def test_an_idempotency_key_reused_with_other_details_is_refused(
    client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any, stripe_sandbox: Any
) -> None:
    """As Stripe does: a repeat must be the same request, or the client would wrongly believe it applied."""
    transaction, other = make_transaction(org), make_transaction(org)
    headers = token_for(org, **{"Idempotency-Key": "order-9"})
    body = {"transaction_ref": transaction.transaction_ref, "customer_email": "a@example.com"}
    assert client.post(CHECKOUT, json=body, headers=headers).status_code == 201

    for changed in (
        {**body, "customer_email": "b@example.com"},
        {**body, "metadata": {"order_id": "ORD-9"}},
        {"transaction_ref": other.transaction_ref},
    ):
        response = client.post(CHECKOUT, json=changed, headers=headers)
        assert response.status_code == 409, changed
        assert "idempotency key was already used" in response.json["error"]["message"]
    assert len(creates(stripe_sandbox)) == 1


def test_a_client_key_cannot_take_over_a_customers_session(
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    """Pay now keys its sessions attempt:<id>:checkout:<n>; an API key of that text is another key."""
    from recovery.recoveries import lifecycle

    transaction = make_transaction(org)
    attempt = lifecycle.start_recovery(db.session, transaction, Actor.system(org.id), now=utcnow()).attempt
    db.session.commit()
    headers = token_for(org, **{"Idempotency-Key": f"attempt:{attempt.id}:checkout:0"})
    taken = client.post(
        CHECKOUT,
        json={"transaction_ref": transaction.transaction_ref, "customer_email": "evil@example.com"},
        headers=headers,
    )
    assert taken.status_code == 201

    pay_now = client.post(f"/pay/{attempt.token}")

    assert pay_now.status_code == 303
    mine = db.session.scalar(select(CheckoutSession).where(CheckoutSession.attempt_id == attempt.id))
    assert mine is not None and mine.stripe_session_id != taken.json["session_id"]
    assert mine.customer_email != "evil@example.com"


def test_rerun_after_a_lost_commit_gets_the_same_stripe_session(
    app: Flask, db: Any, org: Organization, make_transaction: Any, stripe_sandbox: Any
) -> None:
    """A job that crashed after Stripe answered but before our commit: the re-run reuses the key."""
    transaction = make_transaction(org)
    gateway = StripeGateway(StripeSettings.from_config(app.config))
    request = checkout.CheckoutRequest(action="attempt-7-message-1")
    pages = PaymentPages("http://localhost")
    actor = Actor.system(org.id)
    first = checkout.create_checkout_session(
        db.session, gateway, transaction, actor, request, pages=pages, expires_in=timedelta(hours=2)
    )
    first_id = first.stripe_session_id
    db.session.rollback()  # the crash: our record of Stripe's answer is lost, the reservation is not
    transaction = db.session.get(Transaction, transaction.id)
    assert db.session.scalar(select(CheckoutSession.status)) == CheckoutStatus.PENDING

    again = checkout.create_checkout_session(
        db.session, gateway, transaction, actor, request, pages=pages, expires_in=timedelta(hours=2)
    )
    db.session.commit()
    assert again.stripe_session_id == first_id
    posts = creates(stripe_sandbox)
    assert len(posts) == 2 and posts[0]["idempotency_key"] == posts[1]["idempotency_key"]
    listed = sandbox_client(stripe_sandbox).v1.checkout.sessions.list()
    assert [s.id for s in listed.data] == [first_id]


def test_checkout_expiry_is_configurable(
    app: Flask,
    client: FlaskClient,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    reconfigure(app, STRIPE_CHECKOUT_EXPIRES_MINUTES=120)
    transaction = make_transaction(org)
    before = datetime.now(UTC)
    body = client.post(
        CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
    ).json
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(minutes=119) <= expires - before <= timedelta(minutes=121)


def test_the_shortest_expiry_leaves_stripe_its_30_minutes(
    app: Flask,
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    # Stripe counts its 30 minutes from its own creation of the session, after our
    # reservation, the Customer and perhaps a retry (two 500s here): the sandbox,
    # like Stripe, refuses anything shorter.
    reconfigure(app, STRIPE_CHECKOUT_EXPIRES_MINUTES=30)
    transaction = make_transaction(org)
    stripe_sandbox.fault(status=500, count=2)
    response = client.post(
        CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
    )
    assert response.status_code == 201, response.json
    stripe_session = sandbox_client(stripe_sandbox).v1.checkout.sessions.retrieve(response.json["session_id"])
    assert stripe_session.expires_at - stripe_session.created >= 30 * 60
    assert db.session.scalar(select(CheckoutSession.status)) == CheckoutStatus.OPEN


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        (None, "auto"),
        ("en-US", "en"),
        ("en-GB", "en-GB"),
        ("pt-BR", "pt-BR"),
        ("de-CH", "de"),
        ("xx", "auto"),
    ],
)
def test_checkout_locale(locale: str | None, expected: str) -> None:
    assert checkout_locale(locale) == expected


# --- GET /v1/payments/stripe/sessions/{id}/status ------------------------------


def test_session_status(
    client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org, customer_email="payer@example.com")
    headers = token_for(org)
    session_id = client.post(
        CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=headers
    ).json["session_id"]
    url = f"/v1/payments/stripe/sessions/{session_id}/status"
    viewer = token_for(org, Role.VIEWER)
    response = client.get(url, headers=viewer)
    assert response.status_code == 200
    assert response.json == {
        "session_id": session_id,
        "status": "open",
        "payment_status": "unpaid",
        "amount_total": 5000,
        "currency": "usd",
        "customer_email": "payer@example.com",
        "payment_intent_id": None,
    }
    stripe_sandbox.pay(session_id, "4242 4242 4242 4242")
    paid = client.get(url, headers=viewer).json
    assert paid["status"] == "complete" and paid["payment_status"] == "paid"
    assert paid["payment_intent_id"].startswith("pi_")


def test_session_status_not_found_and_other_org(
    client: FlaskClient, org: Organization, make_org: Any, make_transaction: Any, token_for: Any
) -> None:
    other_org = make_org()
    theirs = make_transaction(other_org)
    their_session = client.post(
        CHECKOUT, json={"transaction_ref": theirs.transaction_ref}, headers=token_for(other_org)
    ).json["session_id"]
    for session_id in ("cs_test_doesnotexist", their_session):
        response = client.get(f"/v1/payments/stripe/sessions/{session_id}/status", headers=token_for(org))
        assert response.status_code == 404
        assert response.json["error"]["type"] == "not_found"


def test_status_of_a_session_opened_from_our_payment_link(
    client: FlaskClient,
    org: Organization,
    make_org: Any,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    # Stripe makes these sessions when the customer opens the link: we hold no record of them.
    transaction = make_transaction(org, customer_email="payer@example.com", amount=1250, currency="eur")
    link = client.post(
        LINKS, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
    ).json
    opened = requests.get(link["url"], allow_redirects=False, timeout=5)
    session_id = opened.headers["Location"].rsplit("/", 1)[1]
    stripe_sandbox.pay(session_id, "4242424242424242", email="payer@example.com")
    url = f"/v1/payments/stripe/sessions/{session_id}/status"

    response = client.get(url, headers=token_for(org, Role.VIEWER))

    assert response.status_code == 200, response.json
    body = response.json
    assert (body["session_id"], body["status"], body["payment_status"]) == (session_id, "complete", "paid")
    assert (body["amount_total"], body["currency"], body["customer_email"]) == (
        1250,
        "eur",
        "payer@example.com",
    )
    assert body["payment_intent_id"].startswith("pi_")
    # Another organization's token learns nothing of it; an id that is not Stripe's is not even asked about.
    assert client.get(url, headers=token_for(make_org())).status_code == 404
    stripe_sandbox.reset()
    response = client.get("/v1/payments/stripe/sessions/not-a-session/status", headers=token_for(org))
    assert response.status_code == 404
    assert stripe_sandbox.requests() == []


# --- POST /v1/payments/stripe/payment-links ----------------------------------


def test_create_payment_link(
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    transaction = make_transaction(org, transaction_ref="TXN-L1", amount=1250, currency="eur")
    headers = token_for(org)
    response = client.post(
        LINKS, json={"transaction_ref": "TXN-L1", "amount": 1250, "currency": "eur"}, headers=headers
    )
    assert response.status_code == 201, response.json
    body = response.json
    assert set(body) == {"payment_link_id", "url", "product_id", "price_id"}
    stripe_client = sandbox_client(stripe_sandbox)
    link = stripe_client.v1.payment_links.retrieve(body["payment_link_id"])
    assert link.active
    assert link.restrictions is not None and link.restrictions.completed_sessions.limit == 1
    assert link.after_completion.redirect is not None
    assert link.after_completion.redirect.url.startswith("http://localhost/pay/success")
    assert link.metadata is not None and link.metadata["transaction_ref"] == "TXN-L1"
    price = stripe_client.v1.prices.retrieve(body["price_id"])
    assert (price.unit_amount, price.currency, price.product) == (1250, "eur", body["product_id"])
    db.session.refresh(transaction)
    assert transaction.payment_link_url == body["url"]
    assert transaction.stripe_payment_link_id == body["payment_link_id"]

    # While the link is active, asking again returns it.
    assert client.post(LINKS, json={"transaction_ref": "TXN-L1"}, headers=headers).json == body
    assert len(creates(stripe_sandbox, "/v1/payment_links")) == 1

    # Once it is switched off, a new link reuses the Product and Price.
    links.deactivate_payment_link(
        db.session,
        StripeGateway(StripeSettings.from_config(client.application.config)),
        transaction,
        Actor.system(org.id),
    )
    db.session.commit()
    fresh = client.post(LINKS, json={"transaction_ref": "TXN-L1"}, headers=headers).json
    assert fresh["payment_link_id"] != body["payment_link_id"]
    assert (fresh["product_id"], fresh["price_id"]) == (body["product_id"], body["price_id"])
    assert len(creates(stripe_sandbox, "/v1/products")) == 1
    assert len(creates(stripe_sandbox, "/v1/prices")) == 1


def test_a_link_stripe_no_longer_knows_is_replaced(
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    # Made under a test key before going live, say: Stripe answers resource_missing for all three.
    transaction = make_transaction(org, transaction_ref="TXN-GONE", amount=700, currency="usd")
    transaction.stripe_payment_link_id = "plink_madeelsewhere"
    transaction.stripe_product_id = "prod_madeelsewhere"
    transaction.stripe_price_id = "price_madeelsewhere"
    db.session.commit()

    response = client.post(LINKS, json={"transaction_ref": "TXN-GONE"}, headers=token_for(org))

    assert response.status_code == 201, response.json
    body = response.json
    assert body["payment_link_id"] != "plink_madeelsewhere"
    assert body["product_id"] != "prod_madeelsewhere" and body["price_id"] != "price_madeelsewhere"
    price = sandbox_client(stripe_sandbox).v1.prices.retrieve(body["price_id"])
    assert (price.unit_amount, price.currency) == (700, "usd")
    db.session.refresh(transaction)
    assert transaction.stripe_payment_link_id == body["payment_link_id"]


def test_payment_link_stripe_error_is_502(
    client: FlaskClient, org: Organization, make_transaction: Any, token_for: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org)
    stripe_sandbox.fault(status=500, count=3)
    response = client.post(
        LINKS, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
    )
    assert response.status_code == 502
    assert response.json["error"]["message"].startswith("Stripe could not complete the request")


# --- the dashboard ----------------------------------------------------------------


def test_dashboard_creates_session_and_link(
    client: FlaskClient, db: Any, signed_in: Any, make_transaction: Any, stripe_sandbox: Any
) -> None:
    user = signed_in(Role.OPERATOR)
    org = db.session.get(Organization, user.organization_id)
    transaction = make_transaction(org)
    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)
    assert "Create checkout session" in page and "Create payment link" in page
    response = client.post(
        f"/transactions/{transaction.id}/checkout-session", data={"action": "a" * 32}, follow_redirects=True
    )
    html = response.get_data(as_text=True)
    assert "Checkout session created" in html
    db.session.refresh(transaction)
    assert transaction.checkout_url and transaction.checkout_url in html
    assert 'data-copy="#checkout-url"' in html
    # The same form submitted twice (a double click) is one session.
    client.post(f"/transactions/{transaction.id}/checkout-session", data={"action": "a" * 32})
    assert len(creates(stripe_sandbox)) == 1

    html = client.post(f"/transactions/{transaction.id}/payment-link", follow_redirects=True).get_data(
        as_text=True
    )
    assert "Payment link created" in html
    db.session.refresh(transaction)
    assert transaction.payment_link_url in html
    audit_actions = set(
        db.session.scalars(select(AuditEvent.action).where(AuditEvent.transaction_id == transaction.id))
    )
    assert {"stripe.checkout_session_created", "stripe.payment_link_created"} <= audit_actions
    assert "Refresh status" in client.get(f"/transactions/{transaction.id}").get_data(as_text=True)


def test_dashboard_refresh_shows_live_status(
    client: FlaskClient, db: Any, signed_in: Any, make_transaction: Any, stripe_sandbox: Any
) -> None:
    user = signed_in(Role.OPERATOR)
    transaction = make_transaction(db.session.get(Organization, user.organization_id))
    client.post(f"/transactions/{transaction.id}/checkout-session")
    db.session.refresh(transaction)
    stripe_sandbox.pay(transaction.stripe_checkout_session_id, "4242424242424242")
    html = client.post(
        f"/transactions/{transaction.id}/checkout-session/refresh", follow_redirects=True
    ).get_data(as_text=True)
    assert "Stripe says: complete, paid." in html
    db.session.refresh(transaction)
    assert transaction.status == TransactionStatus.FAILED  # only the signed webhook recovers it


def test_dashboard_viewer_has_no_buttons(
    client: FlaskClient, db: Any, signed_in: Any, make_transaction: Any
) -> None:
    user = signed_in(Role.VIEWER)
    transaction = make_transaction(db.session.get(Organization, user.organization_id))
    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)
    assert "Create checkout session" not in page and "Create payment link" not in page
    assert client.post(f"/transactions/{transaction.id}/checkout-session").status_code == 403
    assert client.post(f"/transactions/{transaction.id}/payment-link").status_code == 403


def test_dashboard_closed_transaction_offers_nothing(
    client: FlaskClient, db: Any, signed_in: Any, make_transaction: Any, stripe_sandbox: Any
) -> None:
    user = signed_in(Role.OWNER)
    transaction = make_transaction(db.session.get(Organization, user.organization_id), status="recovered")
    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)
    assert "Create checkout session" not in page and "nothing to collect" in page
    html = client.post(f"/transactions/{transaction.id}/checkout-session", follow_redirects=True).get_data(
        as_text=True
    )
    assert "is recovered; there is nothing to collect" in html
    assert creates(stripe_sandbox) == []


def test_dashboard_other_org_is_404(client: FlaskClient, signed_in: Any, make_transaction: Any) -> None:
    signed_in(Role.OWNER)
    theirs = make_transaction()
    for path in ("checkout-session", "payment-link", "checkout-session/refresh"):
        assert client.post(f"/transactions/{theirs.id}/{path}").status_code == 404


@pytest.mark.parametrize("app_config", [{"STRIPE_SECRET_KEY": ""}])
def test_dashboard_missing_key_is_a_flash(
    client: FlaskClient, db: Any, signed_in: Any, make_transaction: Any
) -> None:
    user = signed_in(Role.OPERATOR)
    transaction = make_transaction(db.session.get(Organization, user.organization_id))
    response = client.post(f"/transactions/{transaction.id}/checkout-session", follow_redirects=True)
    assert response.status_code == 200
    assert "Stripe API key not configured" in response.get_data(as_text=True)


def test_dashboard_stripe_error_is_a_flash(
    client: FlaskClient, db: Any, signed_in: Any, make_transaction: Any, stripe_sandbox: Any
) -> None:
    user = signed_in(Role.OPERATOR)
    transaction = make_transaction(db.session.get(Organization, user.organization_id))
    stripe_sandbox.fault(status=500, count=3)
    response = client.post(f"/transactions/{transaction.id}/payment-link", follow_redirects=True)
    assert response.status_code == 200
    assert "Stripe could not complete the request" in response.get_data(as_text=True)


# --- customer pages ------------------------------------------------------------------


def test_success_page_thanks_without_fulfilling(
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    stripe_sandbox: Any,
) -> None:
    transaction = make_transaction(org, amount=5000, currency="usd")
    session_id = client.post(
        CHECKOUT, json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
    ).json["session_id"]
    page = client.get(f"/pay/success?session_id={session_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "$50.00" in html and "Acme Shop" in html
    db.session.refresh(transaction)
    assert transaction.status == TransactionStatus.FAILED
    assert "Thank you" in client.get("/pay/success?session_id=cs_unknown").get_data(as_text=True)
    assert "nothing has been charged" in client.get("/pay/cancel").get_data(as_text=True)
