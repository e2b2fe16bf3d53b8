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
from recovery.campaigns import services as campaigns
from recovery.extensions import db
from recovery.messaging.contacts import available_channels
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    BulkStart,
    Campaign,
    CampaignVersion,
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
from recovery.recoveries.refusals import RecoveryRefused
from recovery.refusals import Refused
from recovery.rules import services as rules
from recovery.rules import starting
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
        **_campaign_context(transaction, active),
    }


def _campaign_context(transaction: Transaction, active: RecoveryAttempt | None) -> dict[str, Any]:
    """What the rules would do if a recovery were started now, the campaigns to choose instead,
    and the running attempt's campaign and version."""
    if active is not None:
        return {"active_campaign": _attempt_campaign(active)}
    organization_id = transaction.organization_id
    choices = campaigns.list_campaigns(db.session, organization_id)
    decision = rules.decide(db.session, transaction, now=utcnow()) if choices else None
    chosen = next((c for c in choices if decision and c.id == decision.campaign_id), None)
    return {"rule_decision": decision, "rule_campaign": chosen, "start_campaigns": choices}


def _attempt_campaign(attempt: RecoveryAttempt) -> dict[str, Any] | None:
    """The campaign and version the attempt follows (None: the schedule), and the rule that chose it."""
    if attempt.campaign_version_id is None:
        return None
    version = db.session.get(CampaignVersion, attempt.campaign_version_id)
    campaign = db.session.get(Campaign, version.campaign_id) if version else None
    if version is None or campaign is None:
        return None
    return {"name": campaign.name, "id": campaign.id, "version": version.version, "rule": attempt.rule_name}


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
    attempt = _start(transaction, form)
    if attempt is None:
        return _back(transaction.id)
    first = attempt.next_send_at
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


def _start(transaction: Transaction, form: StartRecoveryForm) -> RecoveryAttempt | None:
    """Start as the form asks: a campaign chosen, a schedule typed, or what the rules decide.

    None when the rules hold the transaction for review or say not to recover it
    (the flash says which rule, and why).
    """
    channels = list(form.channels.data or [])
    allow_fallback = bool(form.allow_fallback.data)
    schedule = (form.schedule.data or "").strip() or None
    chosen = (form.campaign.data or "").strip()
    now = utcnow()
    if chosen:
        if schedule is not None:
            raise RecoveryRefused("Choose a campaign or type a schedule, not both.", field="schedule")
        email = current_user.email
        return starting.start_chosen(
            db.session,
            transaction,
            _actor(),
            int(chosen) if chosen.isdigit() else -1,
            field="campaign",
            sentence=lambda campaign: f"Campaign “{campaign.name}” chosen by {email} at the start.",
            now=now,
            channels=channels,
            allow_fallback=allow_fallback,
        )
    if schedule is not None or not campaigns.list_campaigns(db.session, transaction.organization_id):
        started = lifecycle.start_recovery(
            db.session,
            transaction,
            _actor(),
            now=now,
            channels=channels,
            schedule=schedule,
            allow_fallback=allow_fallback,
        )
        return started.attempt
    result = starting.start_by_rules(
        db.session, transaction, _actor(), now=now, channels=channels, allow_fallback=allow_fallback
    )
    if result.attempt is None and result.decision is not None:
        outcome = "held for review" if result.outcome == "held" else "not recovered"
        decision = result.decision
        flash(f"No recovery started: {decision.sentence} It is {outcome}: {decision.reason}", "success")
    return result.attempt


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
