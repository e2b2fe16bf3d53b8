"""What a rule set would do to the last 90 days of failures, and why one transaction gets its rule.

The preview is one SQL statement for the whole rule set: a CASE over the
rules' conditions, in order, gives each failure the first rule it matches;
counts and amounts are then grouped by that rule and the currency. So it costs
one pass over the window, however many rules (docs/performance.md), and says
exactly what `decide` would say row by row (tests/rules/test_preview.py
compares the two on random data).

A rule set may be given unsaved, as the rules page edits it, to see what it
would do before saving it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, literal, literal_column, select, text

from recovery.models import RuleAction, Transaction
from recovery.models.base import DbSession
from recovery.rules.choice import usable_campaign
from recovery.rules.conditions import RuleRefused, all_clause, read_conditions
from recovery.rules.decision import Decision
from recovery.rules.services import MAX_RULES, LoadedRule, get_rule, load_rules
from recovery.transactions.validation import has_control_characters

WINDOW = timedelta(days=90)
# The CASE's answer for a failure no rule but the default (or none at all) catches.
UNMATCHED = -1


@dataclass
class Tally:
    """How many failures, and their amounts per currency in minor units."""

    count: int = 0
    amounts: dict[str, int] = field(default_factory=dict)

    def add(self, currency: str, count: int, amount: int) -> None:
        self.count += count
        self.amounts[currency] = self.amounts.get(currency, 0) + amount


@dataclass(frozen=True)
class RuleTally:
    rule: LoadedRule
    tally: Tally


@dataclass(frozen=True)
class Preview:
    """Per rule in order (the default last, with what it catches), and what only the default catches."""

    rules: list[RuleTally]
    unmatched: Tally
    since: datetime


def read_rule_set(
    session: DbSession, organization_id: int, raw: Any, name: str = "rules"
) -> list[LoadedRule]:
    """An unsaved rule set from input: a list of rules as the API takes them, checked as a save would.

    Each item may name the saved rule it stands for (`id`) and may be the default
    (`is_default`); the saved default is added last if none is. RuleRefused
    names the field at fault, e.g. `rules[2].conditions[0].values`.
    """
    if not isinstance(raw, list):
        raise RuleRefused("rules must be a list of rules.", field=name)
    if len(raw) > MAX_RULES:
        raise RuleRefused(f"At most {MAX_RULES} rules.", field=name)
    loaded = [_read_rule(session, organization_id, item, f"{name}[{i}]") for i, item in enumerate(raw)]
    if not any(rule.is_default for rule in loaded):
        loaded += [rule for rule in load_rules(session, organization_id) if rule.is_default]
    return loaded


_RULE_KEYS = {
    "id",
    "name",
    "enabled",
    "is_default",
    "conditions",
    "action",
    "campaign_id",
    "reason",
    "version",
}


def _is_rule(session: DbSession, organization_id: int, rule_id: int) -> bool:
    try:
        get_rule(session, organization_id, rule_id)
    except RuleRefused:
        return False
    return True


def _read_rule(session: DbSession, organization_id: int, raw: Any, at: str) -> LoadedRule:
    if not isinstance(raw, Mapping):
        raise RuleRefused("A rule is an object with a name, conditions and an action.", field=at)
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise RuleRefused(f"Unknown field {unknown[0]!r}.", field=f"{at}.{unknown[0]}")
    rule_id = raw.get("id")
    if rule_id is not None and (
        isinstance(rule_id, bool)
        or not isinstance(rule_id, int)
        or not _is_rule(session, organization_id, rule_id)
    ):
        raise RuleRefused(f"There is no rule {rule_id!r}.", field=f"{at}.id")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or has_control_characters(name):
        raise RuleRefused("name is required (at most 200 characters).", field=f"{at}.name")
    enabled, is_default = raw.get("enabled", True), raw.get("is_default", False)
    if not isinstance(enabled, bool) or not isinstance(is_default, bool):
        raise RuleRefused("enabled and is_default are true or false.", field=f"{at}.enabled")
    conditions = read_conditions(raw.get("conditions"), f"{at}.conditions")
    action = raw.get("action", RuleAction.START_CAMPAIGN)
    if action not in RuleAction.ALL:
        raise RuleRefused(f"action must be one of {', '.join(RuleAction.ALL)}.", field=f"{at}.action")
    campaign_id = raw.get("campaign_id")
    if action == RuleAction.START_CAMPAIGN:
        usable_campaign(session, organization_id, campaign_id, f"{at}.campaign_id")
    reason = raw.get("reason")
    return LoadedRule(
        rule_id,
        name.strip(),
        None,
        enabled or is_default,
        is_default,
        () if is_default else tuple(conditions),
        action,
        campaign_id if action == RuleAction.START_CAMPAIGN else None,
        reason if isinstance(reason, str) else None,
    )


def preview(
    session: DbSession, organization_id: int, rules: Sequence[LoadedRule] | None = None, *, now: datetime
) -> Preview:
    """Count the last 90 days' failures by the first rule each matches (the saved rules unless given)."""
    rules = load_rules(session, organization_id) if rules is None else list(rules)
    dialect = session.get_bind().dialect.name
    since = now - WINDOW
    # Rules that can catch anything, in order; the default (and any rule after it) never
    # shows in the CASE: what falls through to it is "unmatched".
    whens = []
    for index, rule in enumerate(rules):
        if rule.is_default:
            break
        if rule.enabled:
            whens.append((all_clause(rule.conditions, dialect, now), literal(index)))
    chosen = (case(*whens, else_=literal(UNMATCHED)) if whens else literal(UNMATCHED)).label("rule_index")
    window = (
        select(chosen, Transaction.currency.label("currency"), Transaction.amount.label("amount"))
        .where(Transaction.organization_id == organization_id, Transaction.failed_at >= since)
        # OFFSET 0 keeps the subquery a subquery. Pulled up, the GROUP BY is over the CASE
        # itself, whose distinct values PostgreSQL estimates from the columns in it (amount:
        # one per row), so it plans a sort of every row (spilling to disk past work_mem)
        # instead of a hash of the few (rule, currency) groups. (bench/rules_preview.py)
        .offset(literal_column("0"))
        .subquery("failure")
    )
    if dialect == "postgresql":
        # One pass of a wide CASE: compiling it to machine code costs more (~0.1 s) than it
        # saves. For this transaction only (a preview writes nothing).
        session.execute(text("SET LOCAL jit = off"))
    # Grouped outside the CASE: PostgreSQL would not see two renderings of it as one expression.
    rows = session.execute(
        select(
            window.c.rule_index, window.c.currency, func.count(), func.coalesce(func.sum(window.c.amount), 0)
        ).group_by(window.c.rule_index, window.c.currency)
    ).all()
    tallies = [Tally() for _ in rules]
    unmatched = Tally()
    for index, currency, count, amount in rows:
        target = unmatched if index == UNMATCHED else tallies[index]
        target.add(currency, int(count), int(amount))
    default = next((i for i, rule in enumerate(rules) if rule.is_default), None)
    if default is not None:
        tallies[default] = unmatched
    return Preview(
        [RuleTally(rule, tally) for rule, tally in zip(rules, tallies, strict=True)], unmatched, since
    )


@dataclass(frozen=True)
class Skipped:
    """A rule above the matching one, and the first of its conditions that did not hold."""

    rule: LoadedRule
    reason: str


@dataclass(frozen=True)
class Explanation:
    matched: LoadedRule | None
    decision: Decision | None
    skipped: list[Skipped]


def explain(
    session: DbSession,
    organization_id: int,
    transaction: Transaction,
    rules: Sequence[LoadedRule] | None = None,
    *,
    now: datetime,
) -> Explanation:
    """Which rule the transaction gets, and for each rule above it why not."""
    rules = load_rules(session, organization_id) if rules is None else list(rules)
    skipped: list[Skipped] = []
    for rule in rules:
        if rule.matches(transaction, now):
            return Explanation(rule, rule.decision(transaction, now), skipped)
        skipped.append(Skipped(rule, _why_not(rule, transaction, now)))
    return Explanation(None, None, skipped)


def _why_not(rule: LoadedRule, transaction: Transaction, now: datetime) -> str:
    if not rule.enabled:
        return "the rule is off"
    failing = next(c for c in rule.conditions if not c.holds(transaction, now))
    return f"{failing.sentence()} does not hold: {failing.why_not(transaction, now)}"
