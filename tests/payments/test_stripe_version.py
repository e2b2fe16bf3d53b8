"""The pinned Stripe API version, the one-request receipt, and the Stripe event ids the webhook takes.

Over HTTP to the sandbox through stripe-python, whose request log records the
Stripe-Version header of every request it received.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import stripe
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from stripe._api_version import _ApiVersion

from recovery.audit import Actor
from recovery.models import CheckoutSession, Organization, Role, WebhookEvent, utcnow
from recovery.payments.gateway import STRIPE_API_VERSION, StripeGateway, StripeSettings
from recovery.recoveries import lifecycle
from recovery.tokens.services import create_token
from stripe_sandbox.config import API_VERSION as SANDBOX_VERSION
from tests.fixtures import stripe_events as se


@pytest.fixture
def app_config(stripe_sandbox: Any) -> dict[str, Any]:
    stripe_sandbox.reset()
    return {
        "STRIPE_SECRET_KEY": stripe_sandbox.api_key,
        "STRIPE_API_BASE": stripe_sandbox.base_url,
        "BASE_URL": "http://localhost",
        "STRIPE_WEBHOOK_SECRET": se.SECRET,
    }


@pytest.fixture
def log_lines(app: Flask) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """What the app's JSON log handler writes, line by line."""
    root = logging.getLogger()
    handler = root.handlers[0]
    buffer = io.StringIO()
    old_stream = handler.setStream(buffer)  # type: ignore[attr-defined]
    old_level = root.level
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    handler.setStream(old_stream)  # type: ignore[attr-defined]
    root.setLevel(old_level)


def paid_attempt(client: FlaskClient, db: Any, org: Organization, make_transaction: Any, sandbox: Any) -> str:
    """A recovery whose customer opened Checkout and paid with 4242; the success page's URL."""
    transaction = make_transaction(org, transaction_ref="TXN-V", amount=5000, currency="usd")
    started = lifecycle.start_recovery(db.session, transaction, Actor.system(org.id), now=utcnow())
    db.session.commit()
    token = started.attempt.token
    assert client.post(f"/pay/{token}").status_code == 303
    session_id = db.session.scalar(select(CheckoutSession.stripe_session_id))
    sandbox.pay(session_id, "4242424242424242")
    return f"/pay/success?session_id={session_id}&t={token}"


# --- the version ---------------------------------------------------------------------------


def test_the_pinned_version_is_the_one_stripe_python_and_the_sandbox_are_typed_for() -> None:
    assert STRIPE_API_VERSION == _ApiVersion.CURRENT == SANDBOX_VERSION


def test_every_request_the_app_sends_names_the_pinned_version(
    client: FlaskClient, db: Any, org: Organization, make_transaction: Any, stripe_sandbox: Any
) -> None:
    success = paid_attempt(client, db, org, make_transaction, stripe_sandbox)
    assert "ending in 4242" in client.get(success).get_data(as_text=True)
    make_transaction(org, transaction_ref="TXN-LINK")
    _token, raw = create_token(
        db.session, org.id, "t", Role.OPERATOR, created_by=None, actor=Actor.system(org.id)
    )
    db.session.commit()
    linked = client.post(
        "/v1/payments/stripe/payment-links",
        json={"transaction_ref": "TXN-LINK"},
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert linked.status_code == 201, linked.json

    ours = [r for r in stripe_sandbox.requests() if not r["path"].startswith("/v1/test_helpers/")]
    assert {r["path"].split("/")[2] for r in ours} >= {
        "checkout",
        "payment_intents",
        "products",
        "payment_links",
    }
    assert {r["stripe_version"] for r in ours} == {STRIPE_API_VERSION}


def test_the_sandbox_answers_with_the_version_it_was_asked_for(stripe_sandbox: Any) -> None:
    stripe_sandbox.reset()
    pinned = stripe.StripeClient(
        stripe_sandbox.api_key,
        base_addresses={"api": stripe_sandbox.base_url},
        stripe_version="2025-01-27.acacia",
    )
    customer = pinned.v1.customers.create(params={"email": "a@example.com"})
    assert customer.last_response.headers["Stripe-Version"] == "2025-01-27.acacia"
    assert stripe_sandbox.requests()[-1]["stripe_version"] == "2025-01-27.acacia"


# --- the receipt ---------------------------------------------------------------------------


def test_the_receipt_reads_the_charge_with_its_payment_intent_in_one_request(
    client: FlaskClient, db: Any, org: Organization, make_transaction: Any, stripe_sandbox: Any
) -> None:
    success = paid_attempt(client, db, org, make_transaction, stripe_sandbox)
    before = len(stripe_sandbox.requests())

    page = client.get(success).get_data(as_text=True)

    assert "Payment received" in page and "ending in 4242" in page
    reads = [r["path"].split("/")[2] for r in stripe_sandbox.requests()[before:]]
    assert reads.count("payment_intents") == 1
    assert "charges" not in reads


def test_the_sandbox_expands_the_latest_charge(stripe_sandbox: Any, org: Organization, db: Any) -> None:
    gateway = StripeGateway(StripeSettings(stripe_sandbox.api_key, api_base=stripe_sandbox.base_url))
    client = stripe.StripeClient(stripe_sandbox.api_key, base_addresses={"api": stripe_sandbox.base_url})
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {"currency": "eur", "unit_amount": 990, "product_data": {"name": "x"}},
                }
            ],
            "success_url": "http://localhost/pay/success",
        }
    )
    paid = stripe_sandbox.pay(session.id, "4242424242424242")

    intent = gateway.retrieve_payment_intent(paid["payment_intent"])

    assert intent.latest_charge is not None
    assert (intent.latest_charge.id, intent.latest_charge.card_last4) == (intent.latest_charge_id, "4242")
    assert intent.latest_charge.paid and intent.latest_charge.status == "succeeded"


# --- event ids and versions at the webhook -------------------------------------------------


@pytest.mark.parametrize(
    "event_id",
    [
        "evt_1NG8Du2eZvKYlo2CUI79vXWy",
        "evt_3NG8Du2eZvKYlo2C0abcdefg",
        "evt_test_65R9Ijk8Ycu1QoTZ9a16PBPwkeSQ8A5g6Zf7Uk0h4k2NQK",
        "evt_" + "a" * 251,  # 255 characters: Stripe's longest id, and our column's
    ],
)
def test_every_shape_of_stripe_event_id_is_taken(client: FlaskClient, db: Any, event_id: str) -> None:
    response = se.post(
        client, se.event("customer.created", {"id": "cus_1", "object": "customer"}, id=event_id)
    )

    assert response.status_code == 200, response.data
    assert db.session.scalar(select(WebhookEvent.stripe_event_id)) == event_id


@pytest.mark.parametrize(
    "event_id",
    ["evt_" + "a" * 252, "evt_", "evt_a-b", "evt_a.b", "cus_1NG8Du2eZvKYlo2C", "EVT_1", "evt_ä", "evt_1 2"],
)
def test_anything_else_is_a_clear_400_and_nothing_is_stored(
    client: FlaskClient, db: Any, event_id: str
) -> None:
    response = se.post(
        client, se.event("customer.created", {"id": "cus_1", "object": "customer"}, id=event_id)
    )

    assert response.status_code == 400
    assert response.json["error"]["message"].startswith("invalid body: id is not a Stripe event id")
    assert db.session.scalar(select(WebhookEvent.id)) is None


@pytest.mark.parametrize("version", ["2020-08-27", "2024-06-20", None, 20240620])
def test_an_event_of_another_api_version_is_taken_and_the_difference_logged(
    client: FlaskClient, db: Any, log_lines: Callable[[], list[dict[str, Any]]], version: Any
) -> None:
    event = se.event("customer.created", {"id": "cus_1", "object": "customer"})
    event["api_version"] = version

    response = se.post(client, event)

    assert response.status_code == 200, response.data
    assert db.session.scalar(select(WebhookEvent.stripe_event_id)) == event["id"]
    noted = [line for line in log_lines() if line.get("event") == "stripe_webhook_api_version_differs"]
    assert len(noted) == 1
    assert noted[0]["event_id"] == event["id"] and noted[0]["expected"] == STRIPE_API_VERSION
    assert noted[0]["api_version"] == (None if version is None else str(version))
    # An event of the pinned version notes nothing.
    assert (
        se.post(client, se.event("customer.created", {"id": "cus_2", "object": "customer"})).status_code
        == 200
    )
    assert (
        len([line for line in log_lines() if line.get("event") == "stripe_webhook_api_version_differs"]) == 1
    )
