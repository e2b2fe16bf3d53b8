"""Owners and admins manage their organization's users."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from recovery.audit import Actor
from recovery.extensions import db
from recovery.models import Role, User
from recovery.security import require_role
from recovery.users import services
from recovery.users.forms import ActiveForm, InviteForm, RoleForm

bp = Blueprint("users", __name__, url_prefix="/users")


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
        "users/index.html", users=users, form=form, role_form=RoleForm(), active_form=ActiveForm()
    ), status


@bp.get("")
@require_role(Role.ADMIN)
def index() -> Any:
    return render_index(InviteForm())


@bp.post("")
@require_role(Role.ADMIN)
def invite() -> Any:
    form = InviteForm()
    if not form.validate_on_submit():
        return render_index(form, 422)
    try:
        user = services.invite_user(
            db.session,
            current_user,
            actor(),
            form.email.data or "",
            form.password.data or "",
            form.role.data or "",
            form.name.data or "",
        )
    except services.UserRefused as error:
        db.session.rollback()
        field = getattr(form, error.field, form.email)
        field.errors = [*field.errors, str(error)]
        return render_index(form, 422)
    db.session.commit()
    flash(f"{user.email} can now sign in as {user.role}.", "success")
    return redirect(url_for("users.index"))


@bp.post("/<int:user_id>/role")
@require_role(Role.ADMIN)
def change_role(user_id: int) -> Any:
    target = org_user(user_id)
    form = RoleForm()
    if form.validate_on_submit():
        try:
            services.change_role(db.session, current_user, actor(), target, form.role.data or "")
            db.session.commit()
            flash(f"{target.email} is now {target.role}.", "success")
        except services.UserRefused as error:
            db.session.rollback()
            flash(str(error), "error")
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
        try:
            services.set_active(db.session, current_user, actor(), target, active)
            db.session.commit()
            flash(f"{target.email} {'can sign in again' if active else 'is deactivated'}.", "success")
        except services.UserRefused as error:
            db.session.rollback()
            flash(str(error), "error")
    return redirect(url_for("users.index"))
