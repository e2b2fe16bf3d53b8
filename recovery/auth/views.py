"""Sign in and sign out."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user

from recovery.audit import Actor, record
from recovery.auth.forms import LoginForm, LogoutForm
from recovery.auth.services import authenticate
from recovery.extensions import db, limiter, login_manager
from recovery.logs import get_logger
from recovery.models import User
from recovery.security import redirect_next

bp = Blueprint("auth", __name__)
log = get_logger("recovery.auth")


@login_manager.user_loader
def load_user(session_id: str) -> User | None:
    """The active user whose session id (`<id>.<session_version>`) is still current."""
    user_id, _, version = session_id.partition(".")
    try:
        user = db.session.get(User, int(user_id))
    except ValueError:
        return None
    if user is None or not user.is_active or version != str(user.session_version):
        return None
    return user


login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to continue."
login_manager.login_message_category = "info"
login_manager.session_protection = "basic"


def _failure_limit() -> str:
    return f"{current_app.config['LOGIN_FAILURES_PER_MINUTE']}/minute"


def _account_key() -> str:
    return "login-account:" + (request.form.get("email") or "").strip().lower()


def _failed(response: Any) -> bool:
    return bool(response.status_code == 401)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_failure_limit, key_func=_account_key, methods=["POST"], deduct_when=_failed)
@limiter.limit(_failure_limit, methods=["POST"], deduct_when=_failed)  # per client address
def login() -> Any:
    if current_user.is_authenticated:
        return redirect_next()
    form = LoginForm(next=request.args.get("next", ""))
    if not form.validate_on_submit():
        return render_template("auth/login.html", form=form), 400 if form.is_submitted() else 200
    user = authenticate(db.session, form.email.data or "", form.password.data or "")
    if user is None:
        log.info("login_failed", email=form.email.data, ip=request.remote_addr)
        db.session.rollback()
        form.password.errors = ["The email or password is not right."]
        return render_template("auth/login.html", form=form), 401
    record(
        db.session,
        Actor.for_user(user, request.remote_addr),
        "user.signed_in",
        target_type="user",
        target_id=user.id,
    )
    db.session.commit()
    login_user(user, remember=bool(form.remember.data))
    log.info("login_succeeded", user_id=user.id, organization_id=user.organization_id)
    return redirect_next()


@bp.post("/logout")
def logout() -> Any:
    if LogoutForm().validate_on_submit():
        user = current_user._get_current_object()
        record(
            db.session,
            Actor.for_user(user, request.remote_addr),
            "user.signed_out",
            target_type="user",
            target_id=user.id,
        )
        db.session.commit()
        logout_user()
        flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
