"""Owners and admins manage their organization's API tokens."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from recovery.audit import Actor
from recovery.extensions import db
from recovery.models import ApiToken, Role, utcnow
from recovery.security import require_role
from recovery.tokens import services
from recovery.tokens.forms import RevokeForm, TokenForm, role_choices

bp = Blueprint("tokens", __name__, url_prefix="/settings/api-tokens")


def actor() -> Actor:
    return Actor.for_user(current_user, request.remote_addr)


def token_status(token: ApiToken) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "active" if token.is_usable(utcnow()) else "expired"


def new_form() -> TokenForm:
    form = TokenForm()
    form.role.choices = role_choices(current_user.role)
    return form


def render_index(form: TokenForm, status: int = 200, new_token: str | None = None) -> Any:
    tokens = services.list_tokens(db.session, current_user.organization_id)
    return render_template(
        "tokens/index.html",
        tokens=[(token, token_status(token)) for token in tokens],
        form=form,
        revoke_form=RevokeForm(),
        new_token=new_token,
    ), status


@bp.get("")
@require_role(Role.ADMIN)
def index() -> Any:
    return render_index(new_form())


@bp.post("")
@require_role(Role.ADMIN)
def create() -> Any:
    form = new_form()
    if not form.validate_on_submit():
        return render_index(form, 422)
    try:
        token, raw = services.create_token(
            db.session,
            current_user.organization_id,
            form.name.data or "",
            form.role.data or "",
            created_by=current_user,
            actor=actor(),
            expires_at=services.expiry_after(form.expires_days.data),
        )
    except services.TokenRefused as error:
        # Answered on the form, next to the input at fault; nothing of the refused token is kept.
        db.session.rollback()
        field = getattr(form, error.field, form.name)
        field.errors = [*field.errors, str(error)]
        return render_index(form, 422)
    # Rendered, not redirected: the plaintext must not travel through the
    # session cookie, and this response is its only appearance (no-store).
    flash(f"API token {token.name!r} created.", "success")
    return render_index(new_form(), 201, new_token=raw)


@bp.post("/<int:token_id>/revoke")
@require_role(Role.ADMIN)
def revoke(token_id: int) -> Any:
    token = services.get_for_org(db.session, current_user.organization_id, token_id)
    if token is None:
        abort(404)
    if RevokeForm().validate_on_submit():
        if services.revoke_token(db.session, token, by=current_user, actor=actor()):
            flash(f"API token {token.name!r} is revoked; requests with it now get 401.", "success")
        else:
            flash(f"API token {token.name!r} was already revoked.", "info")
    return redirect(url_for("tokens.index"))
