"""The dashboard's recoveries: start and cancel from a transaction, and the list of every attempt."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from werkzeug.wrappers import Response

from recovery.audit import Actor
from recovery.extensions import db
from recovery.models import AttemptStatus, Organization, RecoveryAttempt, Role, Transaction, utcnow
from recovery.recoveries import jobs, services
from recovery.recoveries.forms import CHANNEL_CHOICES, CancelRecoveryForm, StartRecoveryForm
from recovery.security import require_role
from recovery.transactions.services import get_for_org

bp = Blueprint("recoveries", __name__)

PAGE_SIZE = 50


def _actor() -> Actor:
    return Actor.for_user(current_user, request.remote_addr)


def panel_context(transaction: Transaction) -> dict[str, Any]:
    """What the transaction page needs for its Recovery card."""
    active = services.active_attempt(db.session, transaction.id)
    available = services.available_channels(db.session, transaction)
    form = StartRecoveryForm(channels=available)
    form.channels.choices = [choice for choice in CHANNEL_CHOICES if choice.value in available]
    organization = db.session.get(Organization, transaction.organization_id)
    return {
        "active_attempt": active,
        "start_form": form,
        "cancel_form": CancelRecoveryForm(),
        "recovery_channels": available,
        "default_schedule": organization.recovery_schedule if organization else "",
        "can_start": active is None and transaction.status not in services.PAID and bool(available),
    }


def _back(transaction_id: int) -> Response:
    return redirect(url_for("transactions.detail", transaction_id=transaction_id, _anchor="recovery"))


@bp.post("/transactions/<int:transaction_id>/recoveries")
@require_role(Role.OPERATOR)
def start(transaction_id: int) -> Response:
    transaction = get_for_org(db.session, current_user.organization_id, transaction_id)
    if transaction is None:
        abort(404)
    form = StartRecoveryForm()
    if not form.validate():
        flash("This form has expired; reload the page and try again.", "error")
        return _back(transaction.id)
    try:
        started = services.start_recovery(
            db.session,
            transaction,
            _actor(),
            now=utcnow(),
            channels=list(form.channels.data or []),
            schedule=(form.schedule.data or "").strip() or None,
        )
    except services.RecoveryRefused as error:
        db.session.rollback()
        flash(error.message, "error")
        return _back(transaction.id)
    db.session.commit()
    jobs.schedule_next(started.attempt)
    flash("Recovery started: the first message is on its way.", "success")
    return _back(transaction.id)


@bp.post("/recoveries/<int:attempt_id>/cancel")
@require_role(Role.OPERATOR)
def cancel(attempt_id: int) -> Response:
    attempt = services.get_for_org(db.session, current_user.organization_id, attempt_id)
    if attempt is None:
        abort(404)
    if not CancelRecoveryForm().validate():
        flash("This form has expired; reload the page and try again.", "error")
        return _back(attempt.transaction_id)
    try:
        cancelled = services.cancel_recovery(db.session, attempt, _actor(), now=utcnow())
    except services.RecoveryRefused as error:
        db.session.rollback()
        flash(error.message, "error")
        return _back(attempt.transaction_id)
    db.session.commit()
    jobs.unschedule(cancelled.pending_job_id)
    flash("Recovery cancelled: no more messages will be sent.", "success")
    return _back(attempt.transaction_id)


@bp.get("/recoveries")
def index() -> Any:
    status = request.args.get("status") or None
    if status not in (None, *AttemptStatus.ALL):
        status = None
    before = request.args.get("before", type=int)
    stmt = (
        select(RecoveryAttempt, Transaction)
        .join(Transaction, Transaction.id == RecoveryAttempt.transaction_id)
        .where(RecoveryAttempt.organization_id == current_user.organization_id)
        .order_by(RecoveryAttempt.id.desc())
        .limit(PAGE_SIZE + 1)
    )
    if status:
        stmt = stmt.where(RecoveryAttempt.status == status)
    if before:
        stmt = stmt.where(RecoveryAttempt.id < before)
    rows = db.session.execute(stmt).all()
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return render_template(
        "recoveries/index.html",
        rows=rows,
        status=status,
        statuses=AttemptStatus.ALL,
        next_before=rows[-1][0].id if more and rows else None,
    )
