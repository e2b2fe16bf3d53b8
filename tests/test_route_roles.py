"""Every staff route that changes something declares the role it needs."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from recovery.models import Organization, Role
from recovery.security import PUBLIC_ENDPOINTS, TOKEN_AUTH_BLUEPRINTS, required_role
from tests.conftest import login

CHANGING = {"POST", "PUT", "PATCH", "DELETE"}

# Views that check the role inside, for one method of a GET+POST page; each is
# still held to its role by a behaviour test (tests/test_security.py's
# VIEWER_REFUSED). Move the check into `require_role` and drop the entry.
CHECKED_INSIDE = {
    "imports.index": "POST needs an operator (recovery/imports/views.py)",
}


def staff_changing_endpoints(app: Flask) -> list[str]:
    """Endpoints of signed-in staff pages that accept a state-changing method."""
    token_auth = {bp.name for bp in TOKEN_AUTH_BLUEPRINTS}
    found = set()
    for rule in app.url_map.iter_rules():
        if not rule.methods & CHANGING or rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        blueprint = rule.endpoint.rpartition(".")[0]
        # API blueprints check the token's role in their own way (tests/test_api_*.py);
        # the Stripe webhook receiver answers below Flask and has no rule here.
        if any(blueprint == name or blueprint.startswith(name + ".") for name in token_auth):
            continue
        found.add(rule.endpoint)
    return sorted(found)


def test_every_staff_post_declares_its_role(app):
    endpoints = staff_changing_endpoints(app)
    undeclared = [
        endpoint
        for endpoint in endpoints
        if required_role(app.view_functions[endpoint]) is None and endpoint not in CHECKED_INSIDE
    ]

    assert undeclared == [], "declare the role with @require_role(...) on: " + ", ".join(undeclared)
    # The walk really sees the staff actions, and skips what it should.
    assert {"payments.refresh_checkout_session", "users.invite", "auth.logout"} <= set(endpoints)
    assert "auth.login" not in endpoints and "api.create_transaction" not in endpoints
    for endpoint in CHECKED_INSIDE:
        assert endpoint in endpoints, f"{endpoint} is gone: drop it from CHECKED_INSIDE"
        assert required_role(app.view_functions[endpoint]) is None, f"{endpoint} declares now: drop it"


@pytest.mark.parametrize(
    ("endpoint", "role"),
    [
        ("payments.refresh_checkout_session", Role.OPERATOR),
        ("payments.create_checkout_session", Role.OPERATOR),
        ("auth.logout", Role.VIEWER),
        ("auth.sign_out_everywhere", Role.VIEWER),
    ],
)
def test_declared_roles(app, endpoint, role):
    assert required_role(app.view_functions[endpoint]) == role


class TestCheckoutRefresh:
    @pytest.fixture
    def app_config(self, stripe_sandbox: Any) -> dict[str, Any]:
        stripe_sandbox.reset()
        return {"STRIPE_SECRET_KEY": stripe_sandbox.api_key, "STRIPE_API_BASE": stripe_sandbox.base_url}

    def test_a_viewer_may_not_refresh_and_stripe_is_not_asked(
        self, app, db, make_user, make_transaction, stripe_sandbox
    ):
        operator = make_user(role=Role.OPERATOR)
        org = db.session.get(Organization, operator.organization_id)
        transaction = make_transaction(org=org)
        operators = app.test_client()
        assert login(operators, operator).status_code == 302
        url = f"/transactions/{transaction.id}/checkout-session"
        assert operators.post(url).status_code == 302
        asked = len(stripe_sandbox.requests())
        assert asked >= 1

        viewers = app.test_client()
        assert login(viewers, make_user(org=org, role=Role.VIEWER)).status_code == 302
        assert viewers.post(url + "/refresh").status_code == 403
        assert len(stripe_sandbox.requests()) == asked, "a viewer's refresh reached Stripe"

        # An operator may.
        page = operators.post(url + "/refresh", follow_redirects=True).get_data(as_text=True)
        assert "Stripe says: open, unpaid." in page
        assert len(stripe_sandbox.requests()) == asked + 1
