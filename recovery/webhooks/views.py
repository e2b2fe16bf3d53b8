"""The Stripe webhook endpoint, and the admin pages that show and replay its events.

`POST /v1/payments/stripe/webhooks` is public (Stripe signs it, no login, no
CSRF); everything under /webhooks is for admins and owners.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

from recovery.audit import Actor
from recovery.extensions import csrf, db, limiter
from recovery.logs import get_logger
from recovery.models import Organization, Role, WebhookState
from recovery.payments.gateway import WebhookRejected, verify_webhook
from recovery.queue import get_queue
from recovery.security import require_role
from recovery.webhooks import jobs, services
from recovery.webhooks.forms import ImportSettingsForm, ProcessAgainForm, ReconcileForm

log = get_logger("recovery.webhooks")

receiver = Blueprint("stripe_webhooks", __name__)
csrf.exempt(receiver)  # Stripe cannot send a CSRF token; the signature is the check
# No rate limit: Stripe's retries are the backpressure, and a refused event is a lost one.
limiter.exempt(receiver)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


def _answer(status: int, kind: str, message: str) -> tuple[Response, int]:
    return jsonify(error={"type": kind, "message": message}), status


def _secrets() -> list[str]:
    return [s.strip() for s in str(current_app.config["STRIPE_WEBHOOK_SECRET"]).split(",") if s.strip()]


def _store(event: dict[str, Any]) -> services.Received:
    """Store the event with one statement that commits itself, on a connection of its own.

    Autocommit spares the BEGIN and COMMIT round trips around the INSERT, and
    the row is still durable before the 200 tells Stripe to stop sending.
    """
    with db.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        return services.store_event(connection, event)


@receiver.post("/v1/payments/stripe/webhooks", strict_slashes=False)
def receive() -> Any:
    """Verify, store, enqueue, answer: in that order, so a stored event is never lost."""
    config = current_app.config
    request.max_content_length = config["STRIPE_WEBHOOK_MAX_BYTES"]
    client = request.remote_addr
    try:
        payload = request.get_data(cache=False)
    except RequestEntityTooLarge:
        log.warning("stripe_webhook_too_large", client=client, content_length=request.content_length)
        return _answer(413, "payload_too_large", "body over the size limit")
    try:
        event = verify_webhook(
            payload,
            request.headers.get("Stripe-Signature"),
            _secrets(),
            config["STRIPE_WEBHOOK_TOLERANCE_SECONDS"],
        )
    except WebhookRejected as rejected:
        if rejected.reason == "not_configured":
            log.error("stripe_webhook_not_configured", client=client)
            return _answer(503, "not_configured", "STRIPE_WEBHOOK_SECRET is not configured")
        name = (
            "stripe_webhook_invalid_body"
            if rejected.reason.startswith("not_")
            else "stripe_webhook_signature_invalid"
        )
        log.warning(name, reason=rejected.reason, client=client, bytes=len(payload))
        return _answer(400, "invalid_request", rejected.message)
    try:
        received = _store(event)
    except SQLAlchemyError as error:
        # 5xx: Stripe retries for three days; nothing was stored or enqueued.
        log.error("stripe_webhook_store_failed", event_id=event["id"], type=event["type"], error=str(error))
        return _answer(503, "unavailable", "could not store the event; retry later")
    queued = False
    if received.created:
        try:
            jobs.enqueue_processing(received.stripe_event_id)
            queued = True
        except RedisError as error:
            # Stored is what matters: the sweeper enqueues it once Redis is back.
            log.warning("stripe_webhook_enqueue_failed", event_id=received.stripe_event_id, error=str(error))
    log.info(
        "stripe_webhook_received",
        event_id=received.stripe_event_id,
        type=received.type,
        duplicate=not received.created,
        queued=queued,
        livemode=bool(event.get("livemode")),
        client=client,
    )
    return jsonify(received=True, duplicate=not received.created), 200


# --- admin pages ---------------------------------------------------------------


def _actor() -> Actor:
    return Actor.for_user(current_user, request.remote_addr)


def _org_event(event_id: int) -> Any:
    event = services.get_event(db.session, current_user.organization_id, event_id)
    if event is None:
        abort(404)
    return event


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name, "")
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


@bp.get("")
@require_role(Role.ADMIN)
def index() -> Any:
    org_id = current_user.organization_id
    state = request.args.get("state") or None
    if state not in (None, *WebhookState.ALL):
        state = None
    types = services.event_types(db.session, org_id)
    type_ = request.args.get("type") or None
    if type_ not in (None, *types):
        type_ = None
    q = (request.args.get("q") or "").strip()[:255] or None
    page = services.list_events(
        db.session, org_id, state=state, type=type_, object_id=q, before=_int_arg("before")
    )
    organization = db.session.get(Organization, org_id)
    settings_form = ImportSettingsForm(
        import_stripe_failures=organization.import_stripe_failures if organization else False,
        stripe_account_id=organization.stripe_account_id if organization else "",
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
    )


@bp.get("/<int:event_id>")
@require_role(Role.ADMIN)
def detail(event_id: int) -> Any:
    event = _org_event(event_id)
    return render_template(
        "webhooks/detail.html",
        event=event,
        payload=json.dumps(event.payload, indent=2, sort_keys=True),
        entries=services.caused_entries(db.session, event),
        form=ProcessAgainForm(),
        can_replay=event.status in (WebhookState.FAILED, WebhookState.UNMATCHED),
    )


@bp.post("/<int:event_id>/process")
@require_role(Role.ADMIN)
def process_again(event_id: int) -> Response:
    event = _org_event(event_id)
    if not ProcessAgainForm().validate_on_submit():
        abort(400)
    try:
        services.replay(db.session, event, _actor())
    except services.ReplayRefused as refused:
        flash(str(refused), "error")
        return redirect(url_for("webhooks.detail", event_id=event.id))
    db.session.commit()
    try:
        jobs.enqueue_processing(event.stripe_event_id)
        flash(f"{event.stripe_event_id} will be processed again in a moment.", "success")
    except RedisError:
        flash(
            f"{event.stripe_event_id} is pending again; the queue is unreachable, "
            "so the sweeper will pick it up within a couple of minutes.",
            "warning",
        )
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
    from recovery import audit

    audit.record(
        db.session, _actor(), "webhook.reconcile_requested", target_type="organization", target_id=org_id
    )
    db.session.commit()
    minutes = current_app.config["STRIPE_RECONCILE_AFTER_MINUTES"]
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
    try:
        changed = services.update_import_settings(
            db.session,
            organization,
            _actor(),
            import_failures=bool(form.import_stripe_failures.data),
            account_id=form.stripe_account_id.data,
        )
    except services.SettingsRefused as refused:
        db.session.rollback()
        flash(str(refused), "error")
        return redirect(url_for("webhooks.index"))
    db.session.commit()
    flash("Stripe settings saved." if changed else "Nothing changed.", "success")
    return redirect(url_for("webhooks.index"))
