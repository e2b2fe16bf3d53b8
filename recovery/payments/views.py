"""Dashboard buttons: create a Checkout Session or Payment Link, refresh its status.

A refusal (ours or Stripe's) propagates: the app flashes it and sends the
person back to the panel (the forms' `next`).
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, abort, flash, redirect, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from recovery.audit import Actor
from recovery.extensions import db
from recovery.models import Role, Transaction
from recovery.money import card_charge_problem
from recovery.payments import checkout, links
from recovery.payments.forms import CreatePaymentForm, RefreshForm
from recovery.payments.gateway import stripe_gateway
from recovery.payments.rules import CLOSED_STATUSES
from recovery.security import require_role
from recovery.templating import format_datetime
from recovery.transactions.services import get_for_org

bp = Blueprint("payments", __name__, url_prefix="/transactions/<int:transaction_id>")

EXPIRED_FORM = "This form has expired; reload the page and try again."


def panel_context(transaction: Transaction) -> dict[str, Any]:
    """What the transaction page needs to show the payment panel."""
    return {
        "checkout": checkout.latest_checkout_session(db.session, transaction),
        "payment_form": CreatePaymentForm(action=uuid.uuid4().hex),
        "refresh_form": RefreshForm(),
        "collectable": transaction.status not in CLOSED_STATUSES,
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


@bp.post("/checkout-session")
@require_role(Role.OPERATOR)
def create_checkout_session(transaction_id: int) -> Response:
    transaction = org_transaction(transaction_id)
    form = CreatePaymentForm()
    if not form.validate():
        flash(EXPIRED_FORM, "error")
        return _back(transaction)
    action = f"dashboard:{form.action.data}" if form.action.data else None
    record = checkout.create_checkout_session(
        db.session, stripe_gateway(), transaction, _actor(), checkout.CheckoutRequest(action=action)
    )
    flash(f"Checkout session created; it can be paid until {format_datetime(record.expires_at)}.", "success")
    return _back(transaction)


@bp.post("/payment-link")
@require_role(Role.OPERATOR)
def create_payment_link(transaction_id: int) -> Response:
    transaction = org_transaction(transaction_id)
    if not CreatePaymentForm().validate():
        flash(EXPIRED_FORM, "error")
        return _back(transaction)
    result = links.create_payment_link(db.session, stripe_gateway(), transaction, _actor())
    flash("Payment link created." if result.created else "The payment link is still active.", "success")
    return _back(transaction)


@bp.post("/checkout-session/refresh")
@require_role(Role.OPERATOR)  # it calls Stripe and may change the transaction's status
def refresh_checkout_session(transaction_id: int) -> Response:
    transaction = org_transaction(transaction_id)
    record = checkout.latest_checkout_session(db.session, transaction)
    if record is None or not RefreshForm().validate():
        flash("There is no checkout session to refresh.", "error")
        return _back(transaction)
    info = checkout.refresh_checkout_session(db.session, stripe_gateway(), record)
    flash(f"Stripe says: {info.status}, {info.payment_status.replace('_', ' ')}.", "info")
    return _back(transaction)
