"""The transaction page's payment buttons, and the success page that never fulfils."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.models import (
    AuditEvent,
    Organization,
    Role,
    TransactionStatus,
)
from tests.fixtures.payments import creates


@pytest.fixture
def app_config(sandbox_app_config: dict[str, Any]) -> dict[str, Any]:
    return sandbox_app_config


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
    create_by_api: Any,
) -> None:
    transaction = make_transaction(org, amount=5000, currency="usd")
    session_id = create_by_api(transaction).json["session_id"]
    page = client.get(f"/pay/success?session_id={session_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "$50.00" in html and "Acme Shop" in html
    db.session.refresh(transaction)
    assert transaction.status == TransactionStatus.FAILED
    assert "Thank you" in client.get("/pay/success?session_id=cs_unknown").get_data(as_text=True)
    assert "nothing has been charged" in client.get("/pay/cancel").get_data(as_text=True)
