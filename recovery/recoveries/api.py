"""The JSON API for recoveries: start one for a transaction, read it, cancel it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, url_for

from recovery.api.auth import current_token, install_token_auth, require_token_role, token_actor
from recovery.api.bodies import json_object
from recovery.api.errors import ApiError
from recovery.api.serializers import iso
from recovery.extensions import db
from recovery.logs import get_logger
from recovery.models import Message, RecoveryAttempt, Role, utcnow
from recovery.recoveries import jobs, services
from recovery.transactions.services import get_by_ref

bp = Blueprint("recoveries_api", __name__, url_prefix="/v1/recoveries")
install_token_auth(bp)

log = get_logger("recovery.api")

START_FIELDS = frozenset({"transaction_ref", "channels", "schedule", "allow_fallback"})


def recovery_json(attempt: RecoveryAttempt) -> dict[str, Any]:
    """The API's recovery object. Never the token: it is the customer's secret link."""
    messages = sorted(attempt_messages(attempt), key=lambda m: (m.step, m.id))
    return {
        "object": "recovery",
        "id": attempt.id,
        "transaction_ref": attempt.transaction.transaction_ref,
        "status": attempt.status,
        "channels": list(attempt.channels),
        "schedule": attempt.schedule_days,
        "allow_fallback": attempt.allow_fallback,
        "step": attempt.step,
        "max_retries": attempt.max_retries,
        "messages_sent": attempt.messages_sent,
        "next_send_at": iso(attempt.next_send_at) if attempt.is_active else None,
        "expires_at": iso(attempt.expires_at),
        "clicked_at": iso(attempt.clicked_at),
        "created_at": iso(attempt.created_at),
        "completed_at": iso(attempt.completed_at),
        "messages": [
            {
                "step": m.step,
                "channel": m.channel,
                "status": m.status,
                "provider": m.provider,
                "provider_id": m.provider_id,
                "error": m.error,
                "sent_at": iso(m.sent_at),
            }
            for m in messages
        ],
    }


def attempt_messages(attempt: RecoveryAttempt) -> list[Message]:
    from sqlalchemy import select

    return list(db.session.scalars(select(Message).where(Message.attempt_id == attempt.id)))


def _refused(error: services.RecoveryRefused) -> ApiError:
    kind = "conflict" if error.status == 409 else "validation_error"
    fields = {error.field: error.message} if error.field else None
    return ApiError(error.status, kind, error.message, fields)


def _attempt(attempt_id: int) -> RecoveryAttempt:
    attempt = services.get_for_org(db.session, current_token().organization_id, attempt_id)
    if attempt is None:
        raise ApiError(404, "not_found", "Recovery not found")
    return attempt


@bp.post("")
@require_token_role(Role.OPERATOR)
def start() -> Any:
    body = json_object()
    unknown = sorted(set(body) - START_FIELDS)
    if unknown:
        raise ApiError(
            422,
            "validation_error",
            f"Unknown field(s): {', '.join(unknown)}.",
            dict.fromkeys(unknown, "Unknown field."),
        )
    ref = body.get("transaction_ref")
    if not isinstance(ref, str) or not ref.strip():
        raise ApiError(
            422, "validation_error", "transaction_ref is required.", {"transaction_ref": "Required."}
        )
    channels = body.get("channels")
    if channels is not None and (
        not isinstance(channels, list) or not all(isinstance(c, str) for c in channels)
    ):
        raise ApiError(
            422,
            "validation_error",
            'channels must be a list such as ["email", "sms"].',
            {"channels": "Must be a list."},
        )
    schedule = body.get("schedule")
    if schedule is not None and not isinstance(schedule, list | str):
        raise ApiError(
            422,
            "validation_error",
            "schedule must be a list of days such as [0, 1, 3, 6].",
            {"schedule": "Must be a list."},
        )
    allow_fallback = body.get("allow_fallback")
    if allow_fallback is not None and not isinstance(allow_fallback, bool):
        raise ApiError(
            422,
            "validation_error",
            "allow_fallback must be true or false.",
            {"allow_fallback": "Must be a boolean."},
        )
    transaction = get_by_ref(db.session, current_token().organization_id, ref.strip())
    if transaction is None:
        raise ApiError(404, "not_found", "Transaction not found")
    try:
        started = services.start_recovery(
            db.session,
            transaction,
            token_actor(),
            now=utcnow(),
            channels=channels,
            schedule=schedule,
            allow_fallback=allow_fallback,
        )
    except services.RecoveryRefused as error:
        db.session.rollback()
        raise _refused(error) from None
    db.session.commit()
    jobs.schedule_next(started.attempt)
    response = jsonify(recovery_json(started.attempt))
    response.status_code = 201
    response.headers["Location"] = url_for("recoveries_api.get", attempt_id=started.attempt.id)
    return response


@bp.get("/<int:attempt_id>")
@require_token_role(Role.VIEWER)
def get(attempt_id: int) -> Any:
    return jsonify(recovery_json(_attempt(attempt_id)))


@bp.post("/<int:attempt_id>/cancel")
@require_token_role(Role.OPERATOR)
def cancel(attempt_id: int) -> Any:
    attempt = _attempt(attempt_id)
    try:
        cancelled = services.cancel_recovery(db.session, attempt, token_actor(), now=utcnow())
    except services.RecoveryRefused as error:
        db.session.rollback()
        raise _refused(error) from None
    db.session.commit()
    jobs.after_cancel(cancelled)
    return jsonify(recovery_json(attempt))
