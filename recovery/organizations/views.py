"""Owners and admins set how their organization's recoveries run (/settings/recovery)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from recovery.audit import Actor
from recovery.extensions import db
from recovery.models import Organization, Role
from recovery.organizations import services
from recovery.organizations.forms import RecoverySettingsForm
from recovery.security import require_role

bp = Blueprint("organizations", __name__, url_prefix="/settings")


def _organization() -> Organization:
    organization = db.session.get(Organization, current_user.organization_id)
    if organization is None:
        abort(404)
    return organization


def _form_for(organization: Organization) -> RecoverySettingsForm:
    return RecoverySettingsForm(
        data={
            "recovery_schedule": organization.recovery_schedule,
            "attempt_lifetime_days": organization.attempt_lifetime_days,
            "email_from_name": organization.email_from_name or "",
            "reply_to_email": organization.reply_to_email or "",
            "excluded_failure_codes": organization.excluded_failure_codes or "",
            "quiet_hours": organization.quiet_hours or "",
            "fallback_channels": sorted(organization.fallback_set),
            "auto_start_recoveries": organization.auto_start_recoveries,
        }
    )


def _render(form: RecoverySettingsForm, organization: Organization, status: int = 200) -> Any:
    return render_template(
        "organizations/recovery_settings.html", form=form, organization=organization
    ), status


@bp.get("/recovery")
@require_role(Role.ADMIN)
def recovery() -> Any:
    organization = _organization()
    return _render(_form_for(organization), organization)


@bp.post("/recovery")
@require_role(Role.ADMIN)
def save_recovery() -> Any:
    organization = _organization()
    form = RecoverySettingsForm()
    if not form.validate_on_submit():
        return _render(form, organization, 422)
    values = services.RecoverySettings(
        recovery_schedule=form.recovery_schedule.data or "",
        attempt_lifetime_days=int(form.attempt_lifetime_days.data or 0),
        email_from_name=form.email_from_name.data,
        reply_to_email=form.reply_to_email.data,
        excluded_failure_codes=form.excluded_failure_codes.data,
        auto_start_recoveries=bool(form.auto_start_recoveries.data),
        fallback_channels=list(form.fallback_channels.data or []),
        quiet_hours=form.quiet_hours.data,
    )
    try:
        changed = services.update_recovery_settings(
            db.session, organization, Actor.for_user(current_user, request.remote_addr), values
        )
    except services.SettingsRefused as refused:
        # Answered on the form, next to the setting at fault; nothing of the refused change is kept.
        db.session.rollback()
        getattr(form, refused.field).errors = [refused.message]
        return _render(form, organization, 422)
    flash("Recovery settings saved." if changed else "Nothing changed.", "success")
    return redirect(url_for("organizations.recovery"))
