"""Staff send a message again whose fate is unknown (its worker stopped while the provider had it)."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, request, url_for
from flask_login import current_user
from sqlalchemy import select
from werkzeug.wrappers import Response

from recovery.audit import Actor
from recovery.extensions import db
from recovery.messaging.forms import ResendForm
from recovery.models import Message, Role, utcnow
from recovery.recoveries import repair
from recovery.security import require_role

bp = Blueprint("messages", __name__, url_prefix="/messages")


@bp.post("/<int:message_id>/resend")
@require_role(Role.OPERATOR)
def resend(message_id: int) -> Response:
    organization_id = current_user.organization_id
    message = db.session.scalar(
        select(Message).where(Message.id == message_id, Message.organization_id == organization_id)
    )
    if message is None:
        abort(404)
    back = redirect(url_for("transactions.detail", transaction_id=message.transaction_id))
    if not ResendForm().validate():
        flash("This form has expired; reload the page and try again.", "error")
        return back
    repair.resend(db.session, message, Actor.for_user(current_user, request.remote_addr), utcnow())
    flash("Sending the message again: the timeline shows how it went.", "success")
    return back
