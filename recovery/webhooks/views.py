"""The admin pages that show and replay Stripe's webhook events (admins and owners).

Stripe's own endpoint, `POST /v1/payments/stripe/webhooks`, is answered below
Flask by recovery/webhooks/receiver.py.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from redis.exceptions import RedisError
from werkzeug.wrappers import Response

from recovery import audit, config
from recovery.audit import Actor
from recovery.boundary import read_only
from recovery.extensions import db
from recovery.logs import get_logger
from recovery.models import Organization, Role, WebhookState
from recovery.queue import get_queue
from recovery.security import require_role
from recovery.templating import row_id_arg
from recovery.webhooks import events, jobs, processing, stripe_account
from recovery.webhooks.forms import ImportSettingsForm, ProcessAgainForm, ReconcileForm

log = get_logger("recovery.webhooks")

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


# --- admin pages ---------------------------------------------------------------


def _actor() -> Actor:
    return Actor.for_user(current_user, request.remote_addr)


def _org_event(event_id: int) -> Any:
    event = events.get_event(db.session, current_user.organization_id, event_id)
    if event is None:
        abort(404)
    return event


@bp.get("")
@read_only
@require_role(Role.ADMIN)
def index() -> Any:
    org_id = current_user.organization_id
    state = request.args.get("state") or None
    if state not in (None, *WebhookState.ALL):
        state = None
    types = events.event_types(db.session, org_id)
    type_ = request.args.get("type") or None
    if type_ not in (None, *types):
        type_ = None
    q = (request.args.get("q") or "").strip()[:255] or None
    page = events.list_events(
        db.session, org_id, state=state, type=type_, object_id=q, before=row_id_arg("before")
    )
    organization = db.session.get(Organization, org_id)
    settings_form = ImportSettingsForm(
        import_stripe_failures=organization.import_stripe_failures if organization else False
    )
    return render_template(
        "webhooks/index.html",
        page=page,
        states=WebhookState.ALL,
        types=types,
        state=state,
        type=type_,
        q=q or "",
        reconcile_form=ReconcileForm(),
        settings_form=settings_form,
        stripe_account_id=organization.stripe_account_id if organization else None,
    )


@bp.get("/<int:event_id>")
@read_only
@require_role(Role.ADMIN)
def detail(event_id: int) -> Any:
    event = _org_event(event_id)
    return render_template(
        "webhooks/detail.html",
        event=event,
        payload=json.dumps(event.payload, indent=2, sort_keys=True),
        entries=events.caused_entries(db.session, event),
        form=ProcessAgainForm(),
        can_replay=event.status in (WebhookState.FAILED, WebhookState.UNMATCHED),
    )


@bp.post("/<int:event_id>/process")
@require_role(Role.ADMIN)
def process_again(event_id: int) -> Response:
    event = _org_event(event_id)
    if not ProcessAgainForm().validate_on_submit():
        abort(400)
    processing.replay(db.session, event, _actor())
    flash(f"{event.stripe_event_id} will be processed again in a moment.", "success")
    return redirect(url_for("webhooks.detail", event_id=event.id))


@bp.post("/reconcile")
@require_role(Role.ADMIN)
def reconcile() -> Response:
    if not ReconcileForm().validate_on_submit():
        abort(400)
    org_id = current_user.organization_id
    try:
        get_queue().enqueue(jobs.reconcile_checkout_sessions, org_id, job_timeout=600)
    except RedisError:
        flash("The job queue is unreachable; try again in a minute.", "error")
        return redirect(url_for("webhooks.index"))
    audit.record(
        db.session, _actor(), "webhook.reconcile_requested", target_type="organization", target_id=org_id
    )
    minutes = config.settings().reconcile_after_minutes
    flash(
        f"Checking every open checkout session older than {minutes} minutes with Stripe; "
        "paid ones show as recovered in a moment.",
        "success",
    )
    return redirect(url_for("webhooks.index"))


@bp.post("/settings")
@require_role(Role.ADMIN)
def settings() -> Response:
    form = ImportSettingsForm()
    if not form.validate_on_submit():
        flash(" ".join(e for errors in form.errors.values() for e in errors) or "Invalid form.", "error")
        return redirect(url_for("webhooks.index"))
    organization = db.session.get(Organization, current_user.organization_id)
    changed = stripe_account.update_import_settings(
        db.session, organization, _actor(), import_failures=bool(form.import_stripe_failures.data)
    )
    flash("Stripe settings saved." if changed else "Nothing changed.", "success")
    return redirect(url_for("webhooks.index"))
