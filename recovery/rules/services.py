"""An organization's ordered rules: listed, added, edited, removed, reordered, and asked to decide.

The rule set is one ordered list per organization whose last rule is the
catch-all default: it has no conditions and cannot be deleted, disabled or
moved. Every change adds one to the changed rule's `version` and to the
organization's `rules_version`, and a write may name the version it read: a
stale one is refused with 409, so two people editing the rules at once never
silently undo each other. The organization's row is locked while the rule set
changes, so positions and versions move one writer at a time.

An organization without any rule (one made before campaigns by a test
fixture) decides nothing: `decide` answers None and the start follows the
organization's own schedule, as it always did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from recovery import audit
from recovery.audit import Actor
from recovery.models import Organization, RecoveryRule, RuleAction, Transaction
from recovery.models.base import DbSession
from recovery.rules.choice import usable_campaign
from recovery.rules.conditions import Condition, RuleRefused, read_conditions
from recovery.rules.decision import Decision
from recovery.transactions.validation import has_control_characters

FIELDS = ("name", "enabled", "conditions", "action", "campaign_id", "reason")
MAX_RULES = 100
DEFAULT_REASONS = {
    RuleAction.DO_NOT_RECOVER: "A rule says not to recover this failure.",
    RuleAction.HOLD_FOR_REVIEW: "A rule holds this failure for staff to review.",
}


class RuleNotFound(RuleRefused):
    status = 404

    def __init__(self) -> None:
        super().__init__("Rule not found.")


class RuleConflict(RuleRefused):
    """Someone changed the rule (or the rule set) since the writer read it."""

    status = 409


@dataclass(frozen=True)
class LoadedRule:
    """A rule with its conditions read once: what `decide`, the preview and the explanation evaluate.

    `rule_id` is None for a rule not saved yet (a preview before saving).
    """

    rule_id: int | None
    name: str
    version: int | None
    enabled: bool
    is_default: bool
    conditions: tuple[Condition, ...]
    action: str
    campaign_id: int | None
    reason: str | None

    @classmethod
    def of(cls, rule: RecoveryRule) -> LoadedRule:
        return cls(
            rule.id,
            rule.name,
            rule.version,
            rule.enabled,
            rule.is_default,
            tuple(read_conditions(rule.conditions)),
            rule.action,
            rule.campaign_id,
            rule.reason,
        )

    def matches(self, transaction: Transaction, now: datetime) -> bool:
        return self.enabled and all(c.holds(transaction, now) for c in self.conditions)

    def decision(self, transaction: Transaction, now: datetime) -> Decision:
        if self.conditions:
            why = "; ".join(c.matched(transaction, now) for c in self.conditions)
        else:
            why = "no rule above it applies" if self.is_default else "it has no conditions"
        return Decision(
            action=self.action,
            rule_id=self.rule_id,
            rule_name=self.name,
            rule_version=self.version,
            campaign_id=self.campaign_id,
            reason=self.reason or DEFAULT_REASONS.get(self.action),
            sentence=f"Rule “{self.name}” matched: {why}.",
        )


# --- reading ----------------------------------------------------------------------------


def list_rules(session: DbSession, organization_id: int) -> list[RecoveryRule]:
    """The organization's rules in the order they are tried, the default last."""
    return list(
        session.scalars(
            select(RecoveryRule)
            .where(RecoveryRule.organization_id == organization_id)
            .order_by(RecoveryRule.is_default, RecoveryRule.position, RecoveryRule.id)
        )
    )


def load_rules(session: DbSession, organization_id: int) -> list[LoadedRule]:
    return [LoadedRule.of(rule) for rule in list_rules(session, organization_id)]


def get_rule(session: DbSession, organization_id: int, rule_id: int) -> RecoveryRule:
    """The organization's rule; RuleNotFound (404) for another's or none."""
    rule = session.get(RecoveryRule, rule_id)
    if rule is None or rule.organization_id != organization_id:
        raise RuleNotFound()
    return rule


def first_match(rules: Sequence[LoadedRule], transaction: Transaction, now: datetime) -> LoadedRule | None:
    return next((rule for rule in rules if rule.matches(transaction, now)), None)


def decide(session: DbSession, transaction: Transaction, *, now: datetime) -> Decision | None:
    """What the organization's rules say for the transaction; None if it has none (its schedule decides)."""
    return decide_with(load_rules(session, transaction.organization_id), transaction, now=now)


def decide_with(rules: Sequence[LoadedRule], transaction: Transaction, *, now: datetime) -> Decision | None:
    """`decide` with the rules loaded once (a bulk start decides a whole chunk with them)."""
    if not rules:
        return None
    rule = first_match(rules, transaction, now)
    # The default has no conditions and is always on, so only a rule set broken by hand gets here.
    return rule.decision(transaction, now) if rule is not None else None


# --- checking input ---------------------------------------------------------------------


def _organization(session: DbSession, organization_id: int) -> Organization:
    """The organization, its row locked until the commit: one rule-set writer at a time."""
    organization = session.get(Organization, organization_id, with_for_update=True, populate_existing=True)
    assert organization is not None
    return organization


def _check_set_version(organization: Organization, expected: int | None) -> None:
    if expected is not None and expected != organization.rules_version:
        raise RuleConflict(
            f"The rules were changed by someone else meanwhile (now version {organization.rules_version}); "
            "reload them and try again.",
            field="version",
        )


def _check_rule_version(rule: RecoveryRule, expected: int | None) -> None:
    if expected is not None and expected != rule.version:
        raise RuleConflict(
            f"Rule “{rule.name}” was changed by someone else meanwhile (now version {rule.version}); "
            "reload it and try again.",
            field="version",
        )


def _text(raw: Any, field: str, *, limit: int, required: bool) -> str | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if required:
            raise RuleRefused(f"{field} is required.", field=field)
        return None
    if not isinstance(raw, str):
        raise RuleRefused(f"{field} must be text.", field=field)
    text = raw.strip()
    if has_control_characters(text):
        raise RuleRefused(f"{field} must not contain control characters.", field=field)
    if len(text) > limit:
        raise RuleRefused(f"{field} is longer than {limit} characters.", field=field)
    return text


def _clean(session: DbSession, organization_id: int, values: Mapping[str, Any], *, is_default: bool) -> None:
    """Refuse values a rule cannot have; `values` holds every field (merged over the rule's own)."""
    _text(values.get("name"), "name", limit=200, required=True)
    if not isinstance(values.get("enabled"), bool):
        raise RuleRefused("enabled must be true or false.", field="enabled")
    read_conditions(values.get("conditions"))
    action = values.get("action")
    if action not in RuleAction.ALL:
        raise RuleRefused(f"action must be one of {', '.join(RuleAction.ALL)}.", field="action")
    if action == RuleAction.START_CAMPAIGN:
        if values.get("campaign_id") is None:
            raise RuleRefused("Choose the campaign this rule starts.", field="campaign_id")
        usable_campaign(session, organization_id, values["campaign_id"], "campaign_id")
    _text(values.get("reason"), "reason", limit=500, required=False)
    if is_default:
        if values.get("conditions"):
            raise RuleRefused(
                "The default rule catches everything else: it has no conditions.", field="conditions"
            )
        if not values.get("enabled"):
            raise RuleRefused("The default rule is always on.", field="enabled")


def _unknown(raw: Mapping[str, Any]) -> None:
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise RuleRefused(f"Unknown field {unknown[0]!r}.", field=unknown[0])


def _assign(rule: RecoveryRule, values: Mapping[str, Any]) -> None:
    rule.name = str(_text(values["name"], "name", limit=200, required=True))
    rule.enabled = bool(values["enabled"])
    rule.conditions = [c.as_dict() for c in read_conditions(values.get("conditions"))]
    rule.action = values["action"]
    rule.campaign_id = values.get("campaign_id") if rule.action == RuleAction.START_CAMPAIGN else None
    rule.reason = _text(values.get("reason"), "reason", limit=500, required=False)


def _values_of(rule: RecoveryRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "enabled": rule.enabled,
        "conditions": rule.conditions,
        "action": rule.action,
        "campaign_id": rule.campaign_id,
        "reason": rule.reason,
    }


def _audit(
    session: DbSession, actor: Actor, action: str, rule: RecoveryRule, now: datetime, **details: Any
) -> None:
    audit.record(
        session,
        actor,
        action,
        target_type="recovery_rule",
        target_id=rule.id,
        at=now,
        name=rule.name,
        version=rule.version,
        **details,
    )


# --- writing ----------------------------------------------------------------------------


def create_rule(
    session: DbSession,
    organization_id: int,
    actor: Actor,
    raw: Mapping[str, Any],
    *,
    now: datetime,
    expected_rules_version: int | None = None,
) -> RecoveryRule:
    """Add a rule just above the default (enabled unless told); RuleRefused naming the field at fault."""
    _unknown(raw)
    organization = _organization(session, organization_id)
    _check_set_version(organization, expected_rules_version)
    values = {"enabled": True, "conditions": [], "action": RuleAction.START_CAMPAIGN, **raw}
    _clean(session, organization_id, values, is_default=False)
    rules = list_rules(session, organization_id)
    if len(rules) >= MAX_RULES:
        raise RuleRefused(f"An organization has at most {MAX_RULES} rules.")
    rule = RecoveryRule(organization_id=organization_id, version=1, is_default=False)
    _assign(rule, values)
    default = next((r for r in rules if r.is_default), None)
    ordinary = [r for r in rules if not r.is_default]
    rule.position = len(ordinary)
    if default is not None:
        default.position = len(ordinary) + 1
    session.add(rule)
    session.flush()
    organization.rules_version += 1
    _audit(session, actor, "rule.created", rule, now, action_taken=rule.action, conditions=rule.conditions)
    return rule


def update_rule(
    session: DbSession,
    rule: RecoveryRule,
    actor: Actor,
    raw: Mapping[str, Any],
    *,
    now: datetime,
    expected_version: int | None = None,
) -> RecoveryRule:
    """Change the fields given (the others stay); 409 if `expected_version` is not the rule's."""
    _unknown(raw)
    organization = _organization(session, rule.organization_id)
    session.refresh(rule)
    _check_rule_version(rule, expected_version)
    before = _values_of(rule)
    values = {**before, **raw}
    _clean(session, rule.organization_id, values, is_default=rule.is_default)
    _assign(rule, values)
    changed = sorted(key for key, value in _values_of(rule).items() if before[key] != value)
    if not changed:
        return rule
    rule.version += 1
    organization.rules_version += 1
    _audit(session, actor, "rule.updated", rule, now, changed=changed)
    return rule


def delete_rule(
    session: DbSession,
    rule: RecoveryRule,
    actor: Actor,
    *,
    now: datetime,
    expected_version: int | None = None,
) -> None:
    """Remove the rule (attempts keep its name and version); never the default."""
    organization = _organization(session, rule.organization_id)
    session.refresh(rule)
    _check_rule_version(rule, expected_version)
    if rule.is_default:
        raise RuleRefused("The default rule catches everything else and cannot be deleted.", status=409)
    _audit(session, actor, "rule.deleted", rule, now)
    session.delete(rule)
    session.flush()
    organization.rules_version += 1
    _renumber(list_rules(session, rule.organization_id))


def _renumber(rules: Sequence[RecoveryRule]) -> None:
    for position, each in enumerate(rules):
        if each.position != position:
            each.position = position


def reorder(
    session: DbSession,
    organization_id: int,
    actor: Actor,
    ids: Any,
    *,
    now: datetime,
    expected_rules_version: int | None = None,
) -> list[RecoveryRule]:
    """Put the rules in the order of `ids`: every rule but the default, once (the default may end it)."""
    organization = _organization(session, organization_id)
    _check_set_version(organization, expected_rules_version)
    rules = list_rules(session, organization_id)
    by_id = {rule.id: rule for rule in rules}
    default = [rule for rule in rules if rule.is_default]
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise RuleRefused("ids must be a list of rule ids.", field="ids")
    if default and ids and ids[-1] == default[0].id:
        ids = ids[:-1]
    if any(i not in by_id for i in ids):
        raise RuleRefused(f"There is no rule {next(i for i in ids if i not in by_id)}.", field="ids")
    if default and default[0].id in ids:
        raise RuleRefused("The default rule stays last.", field="ids")
    wanted = {rule.id for rule in rules if not rule.is_default}
    if len(ids) != len(set(ids)) or set(ids) != wanted:
        raise RuleRefused("List every rule but the default exactly once.", field="ids")
    ordered = [by_id[i] for i in ids] + default
    if ordered == rules:
        return rules
    _renumber(ordered)
    organization.rules_version += 1
    audit.record(
        session,
        actor,
        "rule.reordered",
        target_type="organization",
        target_id=organization_id,
        at=now,
        order=[rule.name for rule in ordered],
    )
    return ordered


def rules_version(session: DbSession, organization_id: int) -> int:
    found = session.scalar(select(Organization.rules_version).where(Organization.id == organization_id))
    return int(found or 0)


def count_rules(session: DbSession, organization_id: int) -> int:
    return int(
        session.scalar(select(func.count()).where(RecoveryRule.organization_id == organization_id)) or 0
    )
