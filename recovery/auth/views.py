"""Sign in, sign out, and the signed-in user's own sessions."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user

from recovery.audit import Actor, record
from recovery.auth import logins, reset
from recovery.auth.forms import ForgotPasswordForm, LoginForm, LogoutForm, NewPasswordForm
from recovery.auth.jobs import send_password_reset
from recovery.auth.services import AccountDeactivated, authenticate
from recovery.auth.settings import staff_settings
from recovery.extensions import db, limiter, login_manager
from recovery.logs import get_logger
from recovery.models import Role, User
from recovery.queue import enqueue
from recovery.security import redirect_next, require_role
from recovery.users.services import UserRefused

bp = Blueprint("auth", __name__)
log = get_logger("recovery.auth")


@login_manager.user_loader
def load_user(session_id: str) -> User | None:
    """The active user whose sign-in the session or remember cookie names, if it is still current."""
    return logins.load_signed_in(db.session, session_id)


login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to continue."
login_manager.login_message_category = "info"
login_manager.session_protection = "basic"


def _failure_limit() -> str:
    return f"{staff_settings().login_failures_per_minute}/minute"


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
    try:
        user = authenticate(db.session, form.email.data or "", form.password.data or "")
    except AccountDeactivated as refused:
        # The password was right: say why, and note it for the organization's admins.
        deactivated = db.session.scalar(
            db.select(User).where(db.func.lower(User.email) == (form.email.data or "").strip().lower())
        )
        if deactivated is not None:
            record(
                db.session,
                Actor.for_user(deactivated, request.remote_addr),
                "user.sign_in_refused_deactivated",
                target_type="user",
                target_id=deactivated.id,
            )
        form.password.errors = [str(refused)]
        return render_template("auth/login.html", form=form), 403
    if user is None:
        log.info("login_failed", email=form.email.data, ip=request.remote_addr)
        form.password.errors = ["The email or password is not right."]
        return render_template("auth/login.html", form=form), 401
    start_session(user, bool(form.remember.data))
    return redirect_next()


def start_session(user: User, remember: bool) -> None:
    """Sign `user` in on this browser: a sign-in row, its audit entry and the cookie (the request commits)."""
    settings = staff_settings()
    logins.start_login(
        db.session,
        user,
        remember=remember,
        lifetime=settings.remember_duration if remember else settings.sign_in_duration,
        ip_address=request.remote_addr,
        user_agent=request.user_agent.string,
    )
    record(
        db.session,
        Actor.for_user(user, request.remote_addr),
        "user.signed_in",
        target_type="user",
        target_id=user.id,
    )
    login_user(user, remember=remember)
    log.info("login_succeeded", user_id=user.id, organization_id=user.organization_id)


def _resets_per_hour() -> str:
    return f"{staff_settings().password_resets_per_hour}/hour"


def _reset_account_key() -> str:
    return "reset-account:" + (request.form.get("email") or "").strip().lower()


def _outbox_link() -> bool:
    """Whether to point at the development outbox: no SMTP server, and not production."""
    settings = staff_settings()
    return settings.email_to_outbox and not settings.is_production


@bp.route("/forgot-password", methods=["GET", "POST"])
@limiter.limit(_resets_per_hour, key_func=_reset_account_key, methods=["POST"])
@limiter.limit(_resets_per_hour, methods=["POST"])  # per client address
def forgot_password() -> Any:
    """Ask for a reset link; the answer is the same whether or not the address has an account.

    Only a job is enqueued here, in both cases: the worker looks the address up.
    """
    form = ForgotPasswordForm()
    if not form.validate_on_submit():
        status = 400 if form.is_submitted() else 200
        return render_template("auth/forgot_password.html", form=form), status
    email = (form.email.data or "").strip()
    try:
        enqueue(send_password_reset, email, request.remote_addr, description="Password reset email")
    except Exception:  # Redis down: RedisError or a socket error; say so, lose nothing
        log.exception("password_reset_enqueue_failed")
        form.email.errors = ["We could not send emails just now. Try again in a minute."]
        return render_template("auth/forgot_password.html", form=form), 503
    return render_template("auth/reset_sent.html", email=email, outbox=_outbox_link())


@bp.route("/reset-password/<token>", methods=["GET", "POST"])
def reset_password(token: str) -> Any:
    """Choose a new password through a reset link, then be signed in here (and nowhere else)."""
    signer = staff_settings().signer
    form = NewPasswordForm()
    try:
        user = reset.user_for_token(db.session, signer, token)
    except reset.ResetRefused as refused:
        return render_template("auth/reset_password.html", form=None, refused=str(refused)), 400
    if not form.validate_on_submit():
        status = 422 if form.is_submitted() else 200
        return render_template("auth/reset_password.html", form=form, user=user, refused=None), status
    try:
        reset.reset_password(db.session, signer, token, form.password.data or "", request.remote_addr)
    except UserRefused as refused:
        # Answered on the form, next to the password; nothing refused is kept.
        db.session.rollback()
        form.password.errors = [str(refused)]
        return render_template("auth/reset_password.html", form=form, user=user, refused=None), 422
    if current_user.is_authenticated:
        logout_user()  # someone else's session in this browser: the link's owner signs in instead
    start_session(user, remember=False)
    flash("Your password is changed. You are signed in here, and signed out everywhere else.", "success")
    return redirect(url_for("transactions.index"))


@bp.post("/logout")
@require_role(Role.VIEWER)
def logout() -> Any:
    """Sign out: end this sign-in server-side, so a copy of its cookies opens nothing either."""
    if LogoutForm().validate_on_submit():
        user = current_user._get_current_object()
        if user.current_login is not None:
            logins.end_login(user.current_login)
        record(
            db.session,
            Actor.for_user(user, request.remote_addr),
            "user.signed_out",
            target_type="user",
            target_id=user.id,
        )
        logout_user()
        flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.get("/account/sessions")
def sessions() -> Any:
    """List the signed-in user's open sign-ins, this one marked."""
    user = current_user._get_current_object()
    return render_template(
        "auth/sessions.html",
        active=logins.active_logins(db.session, user),
        current_id=user.current_login.id if user.current_login else None,
        device_label=logins.device_label,
        form=LogoutForm(),
    )


@bp.post("/account/sessions/sign-out-everywhere")
@require_role(Role.VIEWER)
def sign_out_everywhere() -> Any:
    """End every sign-in of the user, on every device, this one included."""
    if not LogoutForm().validate_on_submit():
        flash("This form has expired; reload the page and try again.", "error")
        return redirect(url_for("auth.sessions"))
    user = current_user._get_current_object()
    ended = logins.sign_out_everywhere(db.session, user, Actor.for_user(user, request.remote_addr))
    logout_user()
    log.info("signed_out_everywhere", user_id=user.id, sessions=ended)
    flash("You are signed out on every device.", "info")
    return redirect(url_for("auth.login"))
