"""The review queue: failures a rule or a campaign's end held for staff, approved or dismissed here.

Every member of staff sees the queue; approving starts a recovery and
dismissing closes the question, so both need an operator, as starting a
recovery anywhere else does. Each is a CSRF-protected POST, audited by the service.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from recovery.audit import Actor
from recovery.campaigns import services as campaigns
from recovery.extensions import db
from recovery.models import Role, Transaction, utcnow
from recovery.refusals import Refused
from recovery.review import services as review
from recovery.security import require_role
from recovery.transactions import services as transactions

bp = Blueprint("review", __name__, url_prefix="/review")


def _held(transaction_id: int) -> Transaction:
    transaction = transactions.get_for_org(db.session, current_user.organization_id, transaction_id)
    if transaction is None:
        abort(404)
    return transaction


def _page(errors: dict[int, dict[str, str]] | None = None, typed: dict[str, str] | None = None) -> Any:
    organization_id = current_user.organization_id
    held = review.held(db.session, organization_id)
    return render_template(
        "review/index.html",
        held=held,
        campaigns=campaigns.list_campaigns(db.session, organization_id),
        errors=errors or {},
        typed=typed or {},
        can_act=current_user.has_role(Role.OPERATOR),
        page_size=review.PAGE,
    ), 422 if errors else 200


@bp.get("/")
def index() -> Any:
    return _page()


def _refused(transaction: Transaction, refused: Refused, field: str) -> Any:
    """The queue again, the message next to the row's input at fault; nothing of the change kept."""
    db.session.rollback()
    if refused.status == 409 and refused.field is None:
        flash(refused.message, "error")
        return redirect(url_for("review.index"))
    typed = {key: request.form.get(key, "") for key in ("campaign_id", "reason")}
    return _page({transaction.id: {refused.field or field: refused.message}}, typed)


@bp.post("/<int:transaction_id>/approve")
@require_role(Role.OPERATOR)
def approve(transaction_id: int) -> Any:
    transaction = _held(transaction_id)
    raw = (request.form.get("campaign_id") or "").strip()
    actor = Actor.for_user(current_user, request.remote_addr)
    try:
        if not raw.isdigit():
            raise review.ReviewRefused("Choose the campaign to start.", field="campaign_id")
        review.approve(db.session, transaction, actor, campaign_id=int(raw), now=utcnow())
    except Refused as refused:
        return _refused(transaction, refused, "campaign_id")
    flash(f"{transaction.transaction_ref} approved: its recovery has started.", "success")
    return redirect(url_for("review.index"))


@bp.post("/<int:transaction_id>/dismiss")
@require_role(Role.OPERATOR)
def dismiss(transaction_id: int) -> Any:
    transaction = _held(transaction_id)
    actor = Actor.for_user(current_user, request.remote_addr)
    try:
        review.dismiss(db.session, transaction, actor, now=utcnow(), reason=request.form.get("reason", ""))
    except Refused as refused:
        return _refused(transaction, refused, "reason")
    flash(f"{transaction.transaction_ref} dismissed: no recovery is started.", "success")
    return redirect(url_for("review.index"))
