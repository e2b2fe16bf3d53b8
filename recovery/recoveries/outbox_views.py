"""The development outbox: every email and SMS that went nowhere, shown exactly as it would be sent."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, render_template
from flask_login import current_user
from sqlalchemy import select
from werkzeug.wrappers import Response

from recovery.config import settings
from recovery.extensions import db
from recovery.messaging.content import sms_length
from recovery.messaging.providers import OutgoingEmail
from recovery.messaging.sender import messaging_settings
from recovery.messaging.smtp import email_headers
from recovery.models import Channel, Message, Organization, Provider, RecoveryAttempt, Transaction
from recovery.recoveries.messages import outgoing, pay_url

bp = Blueprint("messaging", __name__, url_prefix="/outbox")

PAGE_SIZE = 100
# The email's own HTML, framed by the outbox page: inline styles as mail clients
# render them, nothing that runs, and only our own pages may frame it.
PREVIEW_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


def _message(message_id: int) -> Message:
    message = db.session.scalar(
        select(Message).where(
            Message.id == message_id,
            Message.organization_id == current_user.organization_id,
            Message.provider == Provider.OUTBOX,
        )
    )
    if message is None:
        abort(404)
    return message


@bp.get("")
def outbox() -> Any:
    rows = db.session.execute(
        select(Message, Transaction.transaction_ref)
        .join(Transaction, Transaction.id == Message.transaction_id)
        .where(Message.organization_id == current_user.organization_id, Message.provider == Provider.OUTBOX)
        .order_by(Message.id.desc())
        .limit(PAGE_SIZE)
    ).all()
    return render_template("messaging/outbox.html", rows=rows, settings=messaging_settings())


@bp.get("/<int:message_id>")
def detail(message_id: int) -> Any:
    message = _message(message_id)
    attempt = db.session.get(RecoveryAttempt, message.attempt_id)
    organization = db.session.get(Organization, message.organization_id)
    assert attempt is not None and organization is not None
    base_url = settings().base_url
    item = outgoing(message, organization, base_url, attempt.token)
    headers = email_headers(item, messaging_settings()) if isinstance(item, OutgoingEmail) else []
    return render_template(
        "messaging/detail.html",
        message=message,
        headers=headers,
        link=pay_url(base_url, attempt.token),
        sms_length=sms_length(message.body_text) if message.channel == Channel.SMS else None,
        transaction=db.session.get(Transaction, message.transaction_id),
    )


@bp.get("/<int:message_id>/html")
def html(message_id: int) -> Response:
    message = _message(message_id)
    if message.channel != Channel.EMAIL or not message.body_html:
        abort(404)
    response = Response(message.body_html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response
