"""Owners and admins manage their organization's users."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, logout_user
from sqlalchemy import select

from recovery.audit import Actor
from recovery.auth.settings import staff_settings
from recovery.auth.views import start_session
from recovery.extensions import db, mail
from recovery.logs import get_logger
from recovery.messaging.providers import Postman
from recovery.models import Role, StaffEmail, User
from recovery.security import require_role
from recovery.staffmail import services as staffmail
from recovery.unit_of_work import commit_now
from recovery.users import invites, services
from recovery.users.forms import AcceptInviteForm, ActiveForm, InvitationForm, InviteForm, RoleForm

bp = Blueprint("users", __name__, url_prefix="/users")
log = get_logger("recovery.users")


def org_user(user_id: int) -> User:
    user = db.session.scalar(
        select(User).where(User.id == user_id, User.organization_id == current_user.organization_id)
    )
    if user is None:
        abort(404)
    return user


def actor() -> Actor:
    return Actor.for_user(current_user, request.remote_addr)


def render_index(form: InviteForm, status: int = 200) -> Any:
    users = db.session.scalars(
        select(User).where(User.organization_id == current_user.organization_id).order_by(User.email)
    ).all()
    return render_template(
        "users/index.html",
        users=users,
        form=form,
        role_form=RoleForm(),
        active_form=ActiveForm(),
        invitation_form=InvitationForm(),
        staff_outbox=staff_settings().email_to_outbox,
    ), status


@bp.get("")
@require_role(Role.ADMIN)
def index() -> Any:
    return render_index(InviteForm())


@bp.post("")
@require_role(Role.ADMIN)
def invite() -> Any:
    """Invite someone by email: they choose their own password from the link."""
    form = InviteForm()
    if not form.validate_on_submit():
        return render_index(form, 422)
    try:
        email = invites.invite(
            db.session,
            staff_settings().signer,
            current_user,
            actor(),
            form.email.data or "",
            form.name.data or "",
            form.role.data or "",
            staff_settings().base_url,
        )
    except services.UserRefused as error:
        # Answered on the form, next to the input at fault; nothing refused is kept.
        db.session.rollback()
        field = getattr(form, error.field, form.email)
        field.errors = [*field.errors, str(error)]
        return render_index(form, 422)
    _commit_and_send(email, "Invitation")
    return redirect(url_for("users.index"))


def _commit_and_send(email: StaffEmail, what: str) -> None:
    """Commit the invitation, then send its email and say how it went.

    Sent in the request, not by a job, so the admin reads at once whether it went.
    """
    commit_now(db.session, "the invitation stands even if its email fails, and can be sent again")
    settings = staff_settings()
    result = staffmail.send(Postman(settings.messaging, mail), email, current_user.organization.name)
    if not result.sent:
        flash(
            f"{what} for {email.recipient} is saved, but its email could not be sent ({result.error}). "
            "Send it again from the list.",
            "error",
        )
    elif settings.email_to_outbox:
        flash(
            f"{what} for {email.recipient} is in the staff outbox: no SMTP server is configured.", "success"
        )
    else:
        flash(f"{what} sent to {email.recipient}.", "success")


@bp.post("/<int:user_id>/invitation/resend")
@require_role(Role.ADMIN)
def resend_invite(user_id: int) -> Any:
    target = org_user(user_id)
    if not InvitationForm().validate_on_submit():
        flash("This form has expired; reload the page and try again.", "error")
        return redirect(url_for("users.index"))
    email = invites.resend(
        db.session,
        staff_settings().signer,
        current_user,
        actor(),
        target,
        staff_settings().base_url,
    )
    _commit_and_send(email, "A new invitation")
    return redirect(url_for("users.index"))


@bp.post("/<int:user_id>/invitation/revoke")
@require_role(Role.ADMIN)
def revoke_invite(user_id: int) -> Any:
    target = org_user(user_id)
    if not InvitationForm().validate_on_submit():
        flash("This form has expired; reload the page and try again.", "error")
        return redirect(url_for("users.index"))
    email = target.email
    invites.revoke(db.session, current_user, actor(), target)
    flash(f"The invitation for {email} is withdrawn; its link no longer works.", "success")
    return redirect(url_for("users.index"))


@bp.route("/invitation/<token>", methods=["GET", "POST"])
def accept_invite(token: str) -> Any:
    """The invitee chooses their name and password, and is signed in."""
    signer = staff_settings().signer
    try:
        user = invites.user_for_token(db.session, signer, token)
    except services.UserRefused as refused:
        return render_template("users/accept.html", form=None, refused=str(refused)), 400
    form = AcceptInviteForm(name=user.name) if request.method == "GET" else AcceptInviteForm()
    if not form.validate_on_submit():
        status = 422 if form.is_submitted() else 200
        return render_template("users/accept.html", form=form, user=user, refused=None), status
    try:
        invites.accept(
            db.session, signer, token, form.name.data or "", form.password.data or "", request.remote_addr
        )
    except services.UserRefused as refused:
        # Answered on the form, next to the input at fault; nothing refused is kept.
        db.session.rollback()
        getattr(form, refused.field, form.password).errors = [str(refused)]
        return render_template("users/accept.html", form=form, user=user, refused=None), 422
    if current_user.is_authenticated:
        logout_user()  # someone else's session in this browser: the invitee signs in instead
    start_session(user, remember=False)
    log.info("invitation_accepted", user_id=user.id, organization_id=user.organization_id)
    flash(f"Welcome to {user.organization.name}. You are signed in as {user.role}.", "success")
    return redirect(url_for("transactions.index"))


@bp.post("/<int:user_id>/role")
@require_role(Role.ADMIN)
def change_role(user_id: int) -> Any:
    target = org_user(user_id)
    form = RoleForm()
    if form.validate_on_submit():
        services.change_role(db.session, current_user, actor(), target, form.role.data or "")
        flash(f"{target.email} is now {target.role}.", "success")
    else:
        flash("Choose a valid role.", "error")
    return redirect(url_for("users.index"))


@bp.post("/<int:user_id>/active")
@require_role(Role.ADMIN)
def set_active(user_id: int) -> Any:
    target = org_user(user_id)
    form = ActiveForm()
    if form.validate_on_submit():
        active = form.active.data == "1"
        services.set_active(db.session, current_user, actor(), target, active)
        flash(f"{target.email} {'can sign in again' if active else 'is deactivated'}.", "success")
    return redirect(url_for("users.index"))
