"""`/outbox/staff`: the development outbox of emails to staff (password resets, invitations).

Outside production, with no SMTP server, anyone at the machine may read it
without signing in: that is how a forgotten password is reset in the demo,
offline. In production it needs a signed-in admin, who sees only emails to
people whose role is not above their own (each one's link opens the account).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, abort, render_template
from flask_login import current_user

from recovery.auth.settings import staff_settings
from recovery.extensions import db, login_manager
from recovery.models import Role, StaffEmail
from recovery.staffmail import services

bp = Blueprint("staffmail", __name__, url_prefix="/outbox/staff")
_URL = re.compile(r"https?://\S+")


def _scope() -> tuple[int | None, Any]:
    """(organization id, viewer) the reader may see; answers 401/403/404 where they may see nothing."""
    if not staff_settings().email_to_outbox:
        abort(404)  # emails leave over SMTP: there is no outbox to read
    if current_user.is_authenticated:
        if not current_user.has_role(Role.ADMIN):
            abort(403)
        return current_user.organization_id, current_user._get_current_object()
    if staff_settings().is_production:
        abort(login_manager.unauthorized())
    return None, None


@bp.get("")
def outbox() -> Any:
    organization_id, viewer = _scope()
    emails = services.outbox(db.session, organization_id, viewer)
    return render_template("staffmail/outbox.html", emails=emails, public=viewer is None)


@bp.get("/<int:email_id>")
def detail(email_id: int) -> Any:
    organization_id, viewer = _scope()
    visible = {email.id: email for email in services.outbox(db.session, organization_id, viewer, limit=500)}
    email: StaffEmail | None = visible.get(email_id)
    if email is None:
        abort(404)
    # Our own links only (reset, invitation): shown on their own so they can be clicked.
    base = staff_settings().base_url.rstrip("/") + "/"
    links = [url for url in _URL.findall(email.body_text) if url.startswith(base)]
    return render_template("staffmail/detail.html", email=email, links=links, public=viewer is None)
