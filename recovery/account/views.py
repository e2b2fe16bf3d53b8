"""`/account`: your name and password; your sessions are one link away (`/account/sessions`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, logout_user

from recovery.account import services
from recovery.account.forms import NameForm, PasswordForm
from recovery.audit import Actor
from recovery.auth.views import start_session
from recovery.extensions import db
from recovery.models import Role
from recovery.security import require_role
from recovery.users.services import UserRefused

bp = Blueprint("account", __name__, url_prefix="/account")


def _page(
    name_form: NameForm | None = None, password_form: PasswordForm | None = None, status: int = 200
) -> Any:
    return render_template(
        "account/index.html",
        name_form=name_form or NameForm(name=current_user.name),
        password_form=password_form or PasswordForm(),
    ), status


@bp.get("")
def index() -> Any:
    return _page()


@bp.post("/name")
@require_role(Role.VIEWER)
def change_name() -> Any:
    form = NameForm()
    if not form.validate_on_submit():
        return _page(name_form=form, status=422)
    user = current_user._get_current_object()
    try:
        changed = services.change_name(
            db.session, user, Actor.for_user(user, request.remote_addr), form.name.data or ""
        )
    except UserRefused as refused:
        # Answered on the form, next to the name; nothing refused is kept.
        db.session.rollback()
        form.name.errors = [str(refused)]
        return _page(name_form=form, status=422)
    flash("Your name is saved." if changed else "Your name is unchanged.", "success")
    return redirect(url_for("account.index"))


@bp.post("/password")
@require_role(Role.VIEWER)
def change_password() -> Any:
    """Change the password: every other sign-in ends; this browser stays signed in with a fresh one."""
    form = PasswordForm()
    if not form.validate_on_submit():
        return _page(password_form=form, status=422)
    user = current_user._get_current_object()
    try:
        services.change_password(
            db.session,
            user,
            Actor.for_user(user, request.remote_addr),
            form.current.data or "",
            form.password.data or "",
        )
    except UserRefused as refused:
        # Answered on the form, next to the input at fault; nothing refused is kept.
        db.session.rollback()
        getattr(form, refused.field, form.password).errors = [str(refused)]
        return _page(password_form=form, status=422)
    remembered = bool(user.current_login and user.current_login.is_remembered)
    logout_user()
    start_session(user, remembered)  # the request commits the password and the new sign-in together
    flash("Your password is changed. Every other device is signed out.", "success")
    return redirect(url_for("account.index"))
