"""POST /v1/payments/stripe/payment-links: one active link per transaction, made once."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from recovery.audit import Actor
from recovery.models import (
    Organization,
)
from recovery.payments import links
from recovery.payments.gateway import StripeGateway, StripeSettings
from tests.fixtures.payments import LINKS, creates, sandbox_client


@pytest.fixture
def app_config(stripe_sandbox: Any) -> dict[str, Any]:
    stripe_sandbox.reset()
    return {
        "STRIPE_SECRET_KEY": stripe_sandbox.api_key,
        "STRIPE_API_BASE": stripe_sandbox.base_url,
        "BASE_URL": "http://localhost",
    }


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
