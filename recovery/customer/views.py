"""The pages customers see on our domain: where Stripe sends them back after paying."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request
from sqlalchemy import select

from recovery.extensions import db
from recovery.models import CheckoutSession, Organization

bp = Blueprint("customer", __name__, url_prefix="/pay")


@bp.get("/success")
def success() -> Any:
    """Thank the customer. Nothing is fulfilled here: only Stripe's signed webhook does that."""
    session_id = request.args.get("session_id", "")[:255]
    record = organization = None
    if session_id:
        record = db.session.scalar(
            select(CheckoutSession).where(CheckoutSession.stripe_session_id == session_id)
        )
        if record is not None:
            organization = db.session.get(Organization, record.organization_id)
    return render_template("customer/success.html", record=record, organization=organization)


@bp.get("/cancel")
def cancel() -> Any:
    return render_template("customer/cancel.html")
