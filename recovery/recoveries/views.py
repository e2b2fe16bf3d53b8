"""The dashboard's recoveries: start and cancel from a transaction, and the list of every attempt."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from werkzeug.wrappers import Response

from recovery.audit import Actor
from recovery.extensions import db
from recovery.messaging.contacts import available_channels
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    BulkStart,
    Organization,
    RecoveryAttempt,
    Role,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.recoveries import bulk, lifecycle
from recovery.recoveries.forms import (
    CHANNEL_CHOICES,
    BulkStartForm,
    CancelRecoveryForm,
    StartRecoveryForm,
)
from recovery.refusals import Refused
from recovery.security import require_role
from recovery.templating import format_datetime, row_id_arg
from recovery.transactions import live
from recovery.transactions.services import get_for_org

bp = Blueprint("recoveries", __name__)

PAGE_SIZE = 50


def _actor() -> Actor:
    return Actor.for_user(current_user, request.remote_addr)


def panel_context(transaction: Transaction) -> dict[str, Any]:
    """What the transaction page needs for its Recovery card."""
    active = lifecycle.active_attempt(db.session, transaction.id)
    available = available_channels(db.session, transaction)
    organization = db.session.get(Organization, transaction.organization_id)
    form = StartRecoveryForm(
        channels=available, allow_fallback=bool(organization and organization.fallback_set)
    )
    form.channels.choices = [choice for choice in CHANNEL_CHOICES if choice.value in available]
    return {
        "active_attempt": active,
        "start_form": form,
        "cancel_form": CancelRecoveryForm(),
        "recovery_channels": available,
        "default_schedule": organization.recovery_schedule if organization else "",
        "can_start": active is None and transaction.status in TransactionStatus.OPEN and bool(available),
        "cancelled_recovery": _cancelled_recovery(transaction) if active is None else None,
    }


def _cancelled_recovery(transaction: Transaction) -> dict[str, Any] | None:
    """When and by whom the open transaction's latest recovery was cancelled, if that is how it ended."""
    last = transaction.attempts[-1] if transaction.attempts else None
    if (
        last is None
        or last.status != AttemptStatus.CANCELLED
        or transaction.status not in TransactionStatus.OPEN
    ):
        return None
    by = db.session.scalar(
        select(AuditEvent.actor_label)
        .where(
            AuditEvent.transaction_id == transaction.id,
            AuditEvent.action == "recovery.cancelled",
            AuditEvent.target_id == str(last.id),
        )
        .limit(1)
    )
    return {"at": last.ended_at or last.updated_at, "by": by}


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
    started = lifecycle.start_recovery(
        db.session,
        transaction,
        _actor(),
        now=utcnow(),
        channels=list(form.channels.data or []),
        schedule=(form.schedule.data or "").strip() or None,
        allow_fallback=bool(form.allow_fallback.data),
    )
    first = started.attempt.next_send_at
    if first is not None and first > utcnow() + timedelta(minutes=1):
        # Quiet hours in the customer's time zone moved the first message.
        flash(
            "Recovery started: it is quiet hours where the customer is, so the first message goes out at "
            f"{format_datetime(first)}.",
            "success",
        )
    else:
        flash("Recovery started: the first message is on its way.", "success")
    return _back(transaction.id)


@bp.post("/recoveries/<int:attempt_id>/cancel")
@require_role(Role.OPERATOR)
def cancel(attempt_id: int) -> Response:
    attempt = lifecycle.get_for_org(db.session, current_user.organization_id, attempt_id)
    if attempt is None:
        abort(404)
    if not CancelRecoveryForm().validate():
        flash("This form has expired; reload the page and try again.", "error")
        return _back(attempt.transaction_id)
    lifecycle.cancel_recovery(db.session, attempt, _actor(), now=utcnow())
    flash("Recovery cancelled: no more messages will be sent.", "success")
    return _back(attempt.transaction_id)


def _bulk_selection() -> bulk.Selection:
    """The rows checked on the page, or with scope=filter every row matching the list's filter."""
    if request.form.get("scope") == "filter":
        return bulk.select_matching(db.session, current_user.organization_id, request.form)
    return bulk.Selection(bulk.parse_ids(request.form.getlist("ids")))


@bp.post("/recoveries/bulk")
@require_role(Role.OPERATOR)
def bulk_start() -> Response:
    """Store the transactions selected on the list and queue their start; follow it on the progress page."""
    form = BulkStartForm()
    if not form.validate():
        raise Refused("This form has expired; reload the page and try again.")
    selection = _bulk_selection()
    started = bulk.create(db.session, _actor(), selection.ids, form.channel.data or "any", selection.filters)
    return redirect(url_for("recoveries.bulk_progress", bulk_id=started.id))


def _bulk_for_org(bulk_id: int) -> BulkStart:
    found = bulk.get_for_org(db.session, current_user.organization_id, bulk_id)
    if found is None:
        abort(404)
    return found


@bp.get("/recoveries/bulk/<int:bulk_id>")
def bulk_progress(bulk_id: int) -> Any:
    found = _bulk_for_org(bulk_id)
    fragment = bool(request.headers.get("HX-Request"))
    return render_template(
        "recoveries/_bulk_progress.html" if fragment else "recoveries/bulk.html",
        bulk=found,
        sends=bulk.first_sends(db.session, found),
        stalled=bulk.is_stalled(found, utcnow()),
        stalled_minutes=int(bulk.STALLED_AFTER.total_seconds() // 60),
    )


@bp.post("/recoveries/bulk/<int:bulk_id>/resume")
@require_role(Role.OPERATOR)
def bulk_resume(bulk_id: int) -> Response:
    """Run a bulk start that stopped on an error again, from its last committed chunk."""
    found = _bulk_for_org(bulk_id)
    progress = redirect(url_for("recoveries.bulk_progress", bulk_id=found.id))
    if not FlaskForm().validate():  # the CSRF token only
        flash("This form has expired; reload the page and try again.", "error")
        return progress
    bulk.resume(db.session, found, _actor())
    return progress


@bp.get("/recoveries")
def index() -> Any:
    status = request.args.get("status") or None
    if status not in (None, *AttemptStatus.ALL):
        status = None
    before = row_id_arg("before")
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
    # The table polls this same URL (htmx): 204 while its rows are unchanged.
    version = live.attempts_fingerprint([(a, t) for a, t in rows])
    fragment = bool(request.headers.get("HX-Request"))
    if fragment and request.args.get("v") == version:
        return "", 204
    return render_template(
        "recoveries/_table.html" if fragment else "recoveries/index.html",
        rows=rows,
        status=status,
        before=before,
        statuses=AttemptStatus.ALL,
        next_before=rows[-1][0].id if more and rows else None,
        live_version=version,
        live_seconds=live.POLL_SECONDS,
    )
