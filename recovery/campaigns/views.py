"""Settings → Campaigns: the organization's campaigns, their versions, the form, archive.

Every member of staff reads them (a recovery's timeline names its campaign);
only admins change them. An edit saves a new version, and names the version it
was made from: a page left open while someone else saved is refused, saving
nothing. Running recoveries keep the version they started with.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from recovery.audit import Actor
from recovery.campaigns import forms
from recovery.campaigns import services as campaigns
from recovery.campaigns.forms import CampaignForm, StepRow
from recovery.campaigns.steps import MAX_STEPS, CampaignRefused
from recovery.extensions import db
from recovery.models import Campaign, Organization, Role, utcnow
from recovery.security import require_role

bp = Blueprint("campaigns", __name__, url_prefix="/settings/campaigns")


def _actor() -> Actor:
    return Actor.for_user(current_user, request.remote_addr)


def _campaign(campaign_id: int) -> Campaign:
    campaign = campaigns.get(db.session, current_user.organization_id, campaign_id)
    if campaign is None:
        abort(404)
    return campaign


@bp.app_template_global("describe_step")
def describe_step(step: dict[str, Any]) -> str:
    return forms.describe_step(step)


@bp.get("/")
def index() -> Any:
    archived = request.args.get("archived") == "1"
    listed = campaigns.list_campaigns(db.session, current_user.organization_id, archived=archived)
    current = {c.id: campaigns.current_version(db.session, c) for c in listed}
    return render_template(
        "campaigns/index.html",
        campaigns=listed,
        current=current,
        archived=archived,
        end_labels=forms.END_LABELS,
        can_change=current_user.has_role(Role.ADMIN),
    )


@bp.get("/<int:campaign_id>")
def detail(campaign_id: int) -> Any:
    campaign = _campaign(campaign_id)
    return render_template(
        "campaigns/detail.html",
        campaign=campaign,
        versions=list(reversed(campaign.versions)),
        end_labels=forms.END_LABELS,
        can_change=current_user.has_role(Role.ADMIN) and campaign.archived_at is None,
    )


def _render_form(
    form: CampaignForm, rows: list[StepRow], campaign: Campaign | None, status: int = 200, **extra: Any
) -> Any:
    shown = [*rows]
    if len(shown) < MAX_STEPS and (not shown or shown[-1].action):
        shown.append(StepRow())  # one empty row to add a step
    return render_template(
        "campaigns/form.html",
        form=form,
        rows=shown,
        campaign=campaign,
        actions=forms.ACTION_LABELS,
        afters=forms.AFTER_LABELS,
        **extra,
    ), status


def _save(campaign: Campaign | None) -> Any:
    form = CampaignForm()
    rows = forms.read_rows(request.form)
    steps, origin = forms.rows_to_steps(rows)
    if not form.validate_on_submit() or any(row.errors for row in rows):
        return _render_form(form, rows, campaign, 422)
    lifetime = (form.link_lifetime_days.data or "").strip()
    if not lifetime.isdigit():
        form.link_lifetime_days.errors = ["Give the number of days, e.g. 7."]
        return _render_form(form, rows, campaign, 422)
    if request.form.get("add_step"):
        return _render_form(form, rows, campaign)
    raw = {
        "name": form.name.data or "",
        "steps": steps,
        "end": form.end.data,
        "link_lifetime_days": int(lifetime),
    }
    try:
        if campaign is None:
            organization = db.session.get(Organization, current_user.organization_id)
            assert organization is not None
            saved = campaigns.create(db.session, organization, _actor(), raw)
        else:
            version = form.version.data or ""
            expected = int(version) if version.isdigit() else -1
            saved = campaigns.update(db.session, campaign, _actor(), raw, expected_version=expected)
    except CampaignRefused as refused:
        db.session.rollback()
        if not forms.place_error(form, rows, origin, refused.field, refused.message):
            return _render_form(form, rows, campaign, refused.status, problem=refused.message)
        return _render_form(form, rows, campaign, refused.status)
    flash(f"Campaign “{saved.name}” saved as version {saved.current_version}.", "success")
    return redirect(url_for("campaigns.detail", campaign_id=saved.id))


@bp.get("/new")
@require_role(Role.ADMIN)
def new() -> Any:
    return _render_form(CampaignForm(), [], None)


@bp.post("/new")
@require_role(Role.ADMIN)
def create() -> Any:
    return _save(None)


@bp.get("/<int:campaign_id>/edit")
@require_role(Role.ADMIN)
def edit(campaign_id: int) -> Any:
    campaign = _campaign(campaign_id)
    version = campaigns.current_version(db.session, campaign)
    form = CampaignForm(
        data={
            "name": campaign.name,
            "end": version.end,
            "link_lifetime_days": str(version.link_lifetime_days),
            "version": str(campaign.current_version),
        }
    )
    return _render_form(form, [StepRow.of(step) for step in version.steps], campaign)


@bp.post("/<int:campaign_id>/edit")
@require_role(Role.ADMIN)
def update(campaign_id: int) -> Any:
    return _save(_campaign(campaign_id))


@bp.post("/<int:campaign_id>/archive")
@require_role(Role.ADMIN)
def archive(campaign_id: int) -> Any:
    campaign = _campaign(campaign_id)
    campaigns.archive(db.session, campaign, _actor(), now=utcnow())
    flash(f"Campaign “{campaign.name}” archived: no rule or start can choose it now.", "success")
    return redirect(url_for("campaigns.index"))
