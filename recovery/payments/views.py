"""Dashboard buttons: create a Checkout Session or Payment Link, refresh its status."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from recovery.audit import Actor
from recovery.extensions import db
from recovery.models import Role, Transaction
from recovery.money import card_charge_problem
from recovery.payments import services
from recovery.payments.forms import CreatePaymentForm, RefreshForm
from recovery.payments.gateway import StripeFailure, StripeGateway, StripeSettings
from recovery.security import require_role
from recovery.templating import format_datetime
from recovery.transactions.services import get_for_org

bp = Blueprint("payments", __name__, url_prefix="/transactions/<int:transaction_id>")


def gateway() -> StripeGateway:
    """The Stripe gateway for this app's settings; StripeFailure if no key is configured."""
    return StripeGateway(StripeSettings.from_config(current_app.config))


def pages() -> services.PaymentPages:
    return services.PaymentPages(current_app.config["BASE_URL"])


def checkout_expiry() -> timedelta:
    return timedelta(minutes=current_app.config["STRIPE_CHECKOUT_EXPIRES_MINUTES"])


def panel_context(transaction: Transaction) -> dict[str, Any]:
    """What the transaction page needs to show the payment panel."""
    return {
        "checkout": services.latest_checkout_session(db.session, transaction),
        "payment_form": CreatePaymentForm(action=uuid.uuid4().hex),
        "refresh_form": RefreshForm(),
        "collectable": transaction.status not in services.CLOSED_STATUSES,
        # Why Stripe could never charge this amount (under its minimum, a fraction it
        # cannot take): said on the page instead of offering buttons that would fail.
        "charge_problem": card_charge_problem(transaction.amount, transaction.currency),
    }


def org_transaction(transaction_id: int) -> Transaction:
    transaction = get_for_org(db.session, current_user.organization_id, transaction_id)
    if transaction is None:
        abort(404)
    return transaction


def _back(transaction: Transaction) -> Response:
    return redirect(url_for("transactions.detail", transaction_id=transaction.id, _anchor="collect"))


def _actor() -> Actor:
    return Actor.for_user(current_user, request.remote_addr)


def _fail(error: StripeFailure | services.PaymentRefused) -> None:
    # Keep whatever the service saved before it failed (a closed reservation).
    db.session.commit()
    flash(error.message, "error")


@bp.post("/checkout-session")
@require_role(Role.OPERATOR)
def create_checkout_session(transaction_id: int) -> Response:
    transaction = org_transaction(transaction_id)
    form = CreatePaymentForm()
    if not form.validate():
        flash("This form has expired; reload the page and try again.", "error")
        return _back(transaction)
    try:
        record = services.create_checkout_session(
            db.session,
            gateway(),
            transaction,
            _actor(),
            services.CheckoutRequest(action=f"dashboard:{form.action.data}" if form.action.data else None),
            pages=pages(),
            expires_in=checkout_expiry(),
        )
    except (StripeFailure, services.PaymentRefused) as error:
        _fail(error)
        return _back(transaction)
    db.session.commit()
    until = format_datetime(record.expires_at)
    flash(f"Checkout session created; it can be paid until {until}.", "success")
    return _back(transaction)


@bp.post("/payment-link")
@require_role(Role.OPERATOR)
def create_payment_link(transaction_id: int) -> Response:
    transaction = org_transaction(transaction_id)
    if not CreatePaymentForm().validate():
        flash("This form has expired; reload the page and try again.", "error")
        return _back(transaction)
    try:
        result = services.create_payment_link(
            db.session,
            gateway(),
            transaction,
            _actor(),
            pages=services.link_pages(
                current_app.config["BASE_URL"], current_app.config["SECRET_KEY"], transaction.id
            ),
        )
    except (StripeFailure, services.PaymentRefused) as error:
        _fail(error)
        return _back(transaction)
    db.session.commit()
    flash("Payment link created." if result.created else "The payment link is still active.", "success")
    return _back(transaction)


@bp.post("/checkout-session/refresh")
@require_role(Role.OPERATOR)  # it calls Stripe and may change the transaction's status
def refresh_checkout_session(transaction_id: int) -> Response:
    transaction = org_transaction(transaction_id)
    record = services.latest_checkout_session(db.session, transaction)
    if record is None or not RefreshForm().validate():
        flash("There is no checkout session to refresh.", "error")
        return _back(transaction)
    try:
        info = services.refresh_checkout_session(db.session, gateway(), record)
    except (StripeFailure, services.PaymentRefused) as error:
        _fail(error)
        return _back(transaction)
    db.session.commit()
    flash(f"Stripe says: {info.status}, {info.payment_status.replace('_', ' ')}.", "info")
    return _back(transaction)
