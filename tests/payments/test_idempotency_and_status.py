"""A repeated create answers the first session; a session's live status is read from Stripe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import (
    CheckoutSession,
    CheckoutStatus,
    Organization,
    Role,
    Transaction,
    utcnow,
)
from recovery.payments import checkout
from recovery.payments.gateway import StripeGateway, StripeSettings, checkout_locale
from recovery.payments.pages import PaymentPages
from tests.fixtures.payments import CHECKOUT, LINKS, creates, reconfigure, sandbox_client


@pytest.fixture
def app_config(sandbox_app_config: dict[str, Any]) -> dict[str, Any]:
    return sandbox_app_config


# --- idempotency -----------------------------------------------------------------


def test_same_request_twice_returns_the_same_session(
    org: Organization, make_transaction: Any, token_for: Any, create_by_api: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org)
    headers = token_for(org)
    first = create_by_api(transaction, headers=headers)
    second = create_by_api(transaction, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json == second.json
    assert len(creates(stripe_sandbox)) == 1
    other = create_by_api(transaction, headers=headers, customer_email="someone.else@example.com")
    assert other.json["session_id"] != first.json["session_id"]


def test_idempotency_key_header_replays(
    org: Organization, make_transaction: Any, token_for: Any, create_by_api: Any, stripe_sandbox: Any
) -> None:
    transaction = make_transaction(org)
    headers = token_for(org, **{"Idempotency-Key": "client-key-1"})
    first = create_by_api(transaction, headers=headers)
    second = create_by_api(transaction, headers=headers)
    assert first.json == second.json
    headers["Idempotency-Key"] = "client-key-2"
    third = create_by_api(transaction, headers=headers)
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
    create_by_api: Any,
    stripe_sandbox: Any,
) -> None:
    """Pay now keys its sessions attempt:<id>:checkout:<n>; an API key of that text is another key."""
    from recovery.recoveries import lifecycle

    transaction = make_transaction(org)
    attempt = lifecycle.start_recovery(db.session, transaction, Actor.system(org.id), now=utcnow()).attempt
    db.session.commit()
    headers = token_for(org, **{"Idempotency-Key": f"attempt:{attempt.id}:checkout:0"})
    taken = create_by_api(transaction, headers=headers, customer_email="evil@example.com")
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
    app: Flask, org: Organization, make_transaction: Any, create_by_api: Any, stripe_sandbox: Any
) -> None:
    reconfigure(app, STRIPE_CHECKOUT_EXPIRES_MINUTES=120)
    transaction = make_transaction(org)
    before = datetime.now(UTC)
    body = create_by_api(transaction).json
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(minutes=119) <= expires - before <= timedelta(minutes=121)


def test_the_shortest_expiry_leaves_stripe_its_30_minutes(
    app: Flask,
    db: Any,
    org: Organization,
    make_transaction: Any,
    create_by_api: Any,
    stripe_sandbox: Any,
) -> None:
    # Stripe counts its 30 minutes from its own creation of the session, after our
    # reservation, the Customer and perhaps a retry (two 500s here): the sandbox,
    # like Stripe, refuses anything shorter.
    reconfigure(app, STRIPE_CHECKOUT_EXPIRES_MINUTES=30)
    transaction = make_transaction(org)
    stripe_sandbox.fault(status=500, count=2)
    response = create_by_api(transaction)
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
    client: FlaskClient,
    org: Organization,
    make_transaction: Any,
    token_for: Any,
    create_by_api: Any,
    stripe_sandbox: Any,
) -> None:
    transaction = make_transaction(org, customer_email="payer@example.com")
    session_id = create_by_api(transaction).json["session_id"]
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
    client: FlaskClient,
    org: Organization,
    make_org: Any,
    make_transaction: Any,
    token_for: Any,
    create_by_api: Any,
) -> None:
    theirs = make_transaction(make_org())
    their_session = create_by_api(theirs).json["session_id"]
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
    create_by_api: Any,
    stripe_sandbox: Any,
) -> None:
    # Stripe makes these sessions when the customer opens the link: we hold no record of them.
    transaction = make_transaction(org, customer_email="payer@example.com", amount=1250, currency="eur")
    link = create_by_api(transaction, path=LINKS).json
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
