"""Settings → Recovery rules: the ordered list, its form, the preview and "test a transaction".

Every member of staff reads the rules (they decide what happens to each
failure); only admins change them. Each change names the version it read (a
hidden field): a page left open while someone else changed the rules is
refused with a flash that says so, and nothing of it is saved.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from wtforms.fields.choices import SelectChoice

from recovery.audit import Actor
from recovery.campaigns import services as campaigns
from recovery.extensions import db
from recovery.models import RecoveryRule, Role, RuleAction, utcnow
from recovery.rules import forms
from recovery.rules import preview as previews
from recovery.rules import services as rules
from recovery.rules.conditions import RuleRefused, read_conditions
from recovery.rules.forms import ConditionRow, RuleForm
from recovery.security import require_role
from recovery.transactions import services as transactions

bp = Blueprint("rules", __name__, url_prefix="/settings/rules")


def _actor() -> Actor:
    return Actor.for_user(current_user, request.remote_addr)


def _org_id() -> int:
    return int(current_user.organization_id)


def _rule(rule_id: int) -> RecoveryRule:
    try:
        return rules.get_rule(db.session, _org_id(), rule_id)
    except rules.RuleNotFound:
        abort(404)


def _version(raw: str | None) -> int | None:
    """The version a page was made from; an unreadable one is treated as stale (never as 'any')."""
    if raw is None or raw == "":
        return None
    return int(raw) if raw.isdigit() else -1


def describe(rule: RecoveryRule) -> str:
    """The rule's conditions in words: 'the currency is USD and the amount is at least $500.00'."""
    if rule.is_default:
        return "Every failure no rule above catches"
    sentences = [c.sentence() for c in read_conditions(rule.conditions)]
    return (" and ".join(sentences) or "every failure").capitalize()


@bp.app_template_global("rule_conditions")
def rule_conditions(rule: RecoveryRule) -> str:
    return describe(rule)


@bp.get("/")
def index() -> Any:
    organization_id = _org_id()
    listed = rules.list_rules(db.session, organization_id)
    names = {c.id: c.name for c in campaigns.list_campaigns(db.session, organization_id, archived=True)}
    return render_template(
        "rules/index.html",
        rules=listed,
        campaign_names=names,
        action_labels=forms.ACTION_LABELS,
        rules_version=rules.rules_version(db.session, organization_id),
        can_change=current_user.has_role(Role.ADMIN),
    )


@bp.get("/preview")
def preview() -> Any:
    """The preview panel (htmx): what the saved rules would do to the last 90 days' failures."""
    organization_id = _org_id()
    result = previews.preview(db.session, organization_id, now=utcnow())
    return render_template("rules/_preview.html", preview=result)


@bp.get("/test")
def test_transaction() -> Any:
    """Test a transaction: the rule that matches it, and why each rule above it did not."""
    ref = (request.args.get("ref") or "").strip()
    explanation, error = None, None
    if ref:
        transaction = transactions.get_by_ref(db.session, _org_id(), ref)
        if transaction is None:
            error = f"No transaction has the reference “{ref}”."
        else:
            explanation = previews.explain(db.session, _org_id(), transaction, now=utcnow())
    elif "ref" in request.args:
        error = "Enter a transaction reference."
    status = 422 if error else 200
    names = {c.id: c.name for c in campaigns.list_campaigns(db.session, _org_id(), archived=True)}
    return render_template(
        "rules/test.html",
        ref=ref,
        explanation=explanation,
        error=error,
        campaign_names=names,
        action_labels=forms.ACTION_LABELS,
    ), status


# --- the form -----------------------------------------------------------------------------


def _campaign_choices() -> list[SelectChoice]:
    listed = campaigns.list_campaigns(db.session, _org_id())
    return [SelectChoice("", "Choose a campaign")] + [SelectChoice(str(c.id), c.name) for c in listed]


def _render_form(
    form: RuleForm, rows: list[ConditionRow], rule: RecoveryRule | None, status: int = 200, **extra: Any
) -> Any:
    shown = [*rows]
    if len(shown) < forms.MAX_ROWS and (not shown or shown[-1].kind):
        shown.append(ConditionRow())  # always one empty row to add a condition
    return render_template(
        "rules/form.html",
        form=form,
        rows=shown,
        rule=rule,
        labels=forms.CONDITION_LABELS,
        parts=forms.PARTS,
        categories=forms.category_choices(),
        sources=forms.source_choices(),
        **extra,
    ), status


def _form_for(rule: RecoveryRule) -> RuleForm:
    form = RuleForm(
        data={
            "name": rule.name,
            "enabled": rule.enabled,
            "action": rule.action,
            "campaign_id": str(rule.campaign_id or ""),
            "reason": rule.reason or "",
            "version": str(rule.version),
        }
    )
    form.campaign_id.choices = _campaign_choices()
    return form


def _posted(
    rule: RecoveryRule | None,
) -> tuple[RuleForm, list[ConditionRow], dict[str, Any] | None, list[int]]:
    """The form as posted, read into the services' input; None when some input could not even be read."""
    form = RuleForm()
    form.campaign_id.choices = _campaign_choices()
    rows = forms.read_rows(request.form)
    conditions, origin = forms.rows_to_conditions(rows)
    if not form.validate_on_submit() or any(row.errors for row in rows):
        return form, rows, None, origin
    campaign = form.campaign_id.data or ""
    raw: dict[str, Any] = {
        "name": form.name.data or "",
        "action": form.action.data,
        "campaign_id": int(campaign) if campaign.isdigit() else None,
        "reason": form.reason.data or None,
        "conditions": conditions,
    }
    if rule is None or not rule.is_default:
        raw["enabled"] = bool(form.enabled.data)
    if rule is not None and rule.is_default:
        raw.pop("conditions")
    return form, rows, raw, origin


def _previewed(rule: RecoveryRule | None, raw: dict[str, Any]) -> Any:
    """The preview of the rule set as it would be with this form saved (nothing is written)."""
    loaded = rules.load_rules(db.session, _org_id())
    candidate = rules.LoadedRule(
        rule_id=rule.id if rule else None,
        name=raw["name"] or "This rule",
        version=None,
        enabled=raw.get("enabled", True),
        is_default=bool(rule and rule.is_default),
        conditions=tuple(read_conditions(raw.get("conditions", rule.conditions if rule else []))),
        action=raw["action"],
        campaign_id=raw["campaign_id"],
        reason=raw["reason"],
    )
    if rule is None:
        at = next((i for i, each in enumerate(loaded) if each.is_default), len(loaded))
        loaded.insert(at, candidate)
    else:
        loaded = [candidate if each.rule_id == rule.id else each for each in loaded]
    return previews.preview(db.session, _org_id(), loaded, now=utcnow())


def _save(rule: RecoveryRule | None) -> Any:
    form, rows, raw, origin = _posted(rule)
    if raw is None:
        return _render_form(form, rows, rule, 422)
    try:
        if request.form.get("preview"):
            return _render_form(form, rows, rule, preview=_previewed(rule, raw))
        if rule is None:
            saved = rules.create_rule(db.session, _org_id(), _actor(), raw, now=utcnow())
        else:
            expected = _version(form.version.data)
            saved = rules.update_rule(
                db.session, rule, _actor(), raw, now=utcnow(), expected_version=expected
            )
    except RuleRefused as refused:
        # Answered next to the input at fault; nothing of the change is kept.
        db.session.rollback()
        forms.place_error(form, rows, origin, refused.field, refused.message)
        return _render_form(form, rows, rule, refused.status if refused.status != 404 else 422)
    flash(f"Rule “{saved.name}” saved.", "success")
    return redirect(url_for("rules.index"))


@bp.get("/new")
@require_role(Role.ADMIN)
def new() -> Any:
    form = RuleForm(data={"enabled": True, "action": RuleAction.START_CAMPAIGN})
    form.campaign_id.choices = _campaign_choices()
    return _render_form(form, [], None)


@bp.post("/new")
@require_role(Role.ADMIN)
def create() -> Any:
    return _save(None)


@bp.get("/<int:rule_id>/edit")
@require_role(Role.ADMIN)
def edit(rule_id: int) -> Any:
    rule = _rule(rule_id)
    return _render_form(_form_for(rule), [ConditionRow.of(c) for c in rule.conditions], rule)


@bp.post("/<int:rule_id>/edit")
@require_role(Role.ADMIN)
def update(rule_id: int) -> Any:
    return _save(_rule(rule_id))


# --- the list's buttons: each a small POST naming the version it was shown -------------------


@bp.post("/<int:rule_id>/enabled")
@require_role(Role.ADMIN)
def set_enabled(rule_id: int) -> Any:
    rule = _rule(rule_id)
    enabled = request.form.get("enabled") == "1"
    expected = _version(request.form.get("version"))
    rules.update_rule(
        db.session, rule, _actor(), {"enabled": enabled}, now=utcnow(), expected_version=expected
    )
    flash(f"Rule “{rule.name}” {'enabled' if enabled else 'disabled'}.", "success")
    return redirect(url_for("rules.index"))


@bp.post("/<int:rule_id>/delete")
@require_role(Role.ADMIN)
def delete(rule_id: int) -> Any:
    rule = _rule(rule_id)
    name = rule.name
    rules.delete_rule(
        db.session, rule, _actor(), now=utcnow(), expected_version=_version(request.form.get("version"))
    )
    flash(f"Rule “{name}” deleted.", "success")
    return redirect(url_for("rules.index"))


@bp.post("/<int:rule_id>/move")
@require_role(Role.ADMIN)
def move(rule_id: int) -> Any:
    """Move a rule one place up or down (the default stays last)."""
    rule = _rule(rule_id)
    direction = request.form.get("direction")
    if direction not in ("up", "down"):
        raise RuleRefused("Move a rule up or down.", field="direction", status=400)
    ids = [each.id for each in rules.list_rules(db.session, _org_id()) if not each.is_default]
    if rule.id not in ids:
        raise RuleRefused("The default rule stays last.", status=409)
    at = ids.index(rule.id)
    to = at - 1 if direction == "up" else at + 1
    if 0 <= to < len(ids):
        ids[at], ids[to] = ids[to], ids[at]
    expected = _version(request.form.get("rules_version"))
    rules.reorder(db.session, _org_id(), _actor(), ids, now=utcnow(), expected_rules_version=expected)
    flash(f"Rule “{rule.name}” moved {direction}.", "success")
    return redirect(url_for("rules.index"))
