"""The preview: one SQL statement that says, per rule, what `decide` says row by row; and the explanation."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, insert

from recovery.models import Organization, RuleAction, Transaction, utcnow
from recovery.rules.conditions import read_conditions
from recovery.rules.preview import WINDOW, explain, preview, read_rule_set
from recovery.rules.services import LoadedRule, load_rules
from tests.rules.conftest import campaign

NOW = utcnow().replace(microsecond=0)

CURRENCIES = ["usd", "eur", "gbp", "jpy"]
COUNTRIES = ["US", "DE", "FR", "CA", None]
CODES = [
    "insufficient_funds",
    "do_not_honor",
    "card_declined",
    "stolen_card",
    "lost_card",
    "expired_card",
    "authentication_required",
    "duplicate_transaction",
    "some_new_code",
    None,
]
SOURCES = ["stripe", "csv", "api", "form"]
METADATA: list[dict[str, Any]] = [
    {},
    {"plan": "gold"},
    {"plan": "silver"},
    {"plan": 3},
    {"plan": True},
    {"n": "3"},
]


def random_rows(organization_id: int, count: int, seed: int = 18) -> list[dict[str, Any]]:
    """Failures spread over 120 days (some outside the preview's 90), in every shape a condition reads."""
    rng = random.Random(seed)
    rows = []
    for n in range(count):
        rows.append(
            {
                "organization_id": organization_id,
                "transaction_ref": f"P-{n:06d}",
                "amount": rng.choice([0, 50, 999, 1000, 1001, rng.randrange(1, 300_000)]),
                "currency": rng.choice(CURRENCIES),
                "status": "failed",
                "failure_code": rng.choice(CODES),
                "customer_email": rng.choice([None, "", f"c{n}@example.com"]),
                "customer_phone": rng.choice([None, "", "+14155550100"]),
                "customer_country": rng.choice(COUNTRIES),
                "meta": rng.choice(METADATA),
                "source": rng.choice(SOURCES),
                "failed_at": NOW - timedelta(seconds=rng.randrange(0, 120 * 86400)),
            }
        )
    return rows


def subset(pool: list[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from([v for v in pool if v is not None]), min_size=1, max_size=3)


amount_bound = st.one_of(st.none(), st.sampled_from([0, 50, 999, 1000, 1001, 50_000, 150_000]))

CONDITION = st.one_of(
    st.builds(
        lambda c, lo, hi: {"type": "amount", "currency": c, "min": lo, "max": hi},
        st.sampled_from(CURRENCIES),
        amount_bound,
        amount_bound,
    ).filter(
        lambda c: (
            (c["min"], c["max"]) != (None, None)
            and (c["min"] is None or c["max"] is None or c["min"] <= c["max"])
        )
    ),
    subset(CURRENCIES).map(lambda v: {"type": "currency_in", "values": v}),
    subset(COUNTRIES).map(lambda v: {"type": "country_in", "values": v}),
    subset(COUNTRIES).map(lambda v: {"type": "country_not_in", "values": v}),
    subset(["retry_later", "customer_action", "do_not_contact", "unknown"]).map(
        lambda v: {"type": "decline_category_in", "values": v}
    ),
    subset(CODES).map(lambda v: {"type": "decline_code_in", "values": v}),
    subset(SOURCES).map(lambda v: {"type": "source_in", "values": v}),
    st.sampled_from(["gold", "silver", "3", "true"]).map(
        lambda v: {"type": "metadata_equals", "key": "plan", "value": v}
    ),
    st.booleans().map(lambda v: {"type": "has_email", "value": v}),
    st.booleans().map(lambda v: {"type": "has_phone", "value": v}),
    st.sampled_from([1, 7, 30, 60, 100]).map(lambda d: {"type": "failed_within_days", "days": d}),
)

RULE = st.builds(
    lambda enabled, conditions: (enabled, conditions),
    st.booleans() | st.just(True),
    st.lists(CONDITION, min_size=0, max_size=3),
)


def loaded(index: int, enabled: bool, conditions: list[dict[str, Any]]) -> LoadedRule:
    return LoadedRule(
        index,
        f"Rule {index}",
        1,
        enabled,
        False,
        tuple(read_conditions(conditions)),
        "hold_for_review",
        None,
        None,
    )


DEFAULT = LoadedRule(None, "Everything else", 1, True, True, (), "hold_for_review", None, None)


def expected_counts(
    rules: list[LoadedRule], transactions: list[Transaction]
) -> tuple[list[int], int, dict[str, int]]:
    """The plain Python answer: each failure of the window to its first matching rule."""
    counts = [0] * len(rules)
    unmatched, amounts = 0, {}
    since = NOW - WINDOW
    for transaction in transactions:
        if transaction.failed_at < since:
            continue
        for index, rule in enumerate(rules):
            if not rule.is_default and rule.matches(transaction, NOW):
                counts[index] += 1
                break
        else:
            unmatched += 1
            amounts[transaction.currency] = amounts.get(transaction.currency, 0) + transaction.amount
    return counts, unmatched, amounts


def test_the_preview_counts_what_python_decides_over_10000_failures(db: Any, org: Organization) -> None:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("the 10,000-row comparison runs on PostgreSQL; SQLite runs the small one below")
    organization_id = org.id
    rows = random_rows(organization_id, 10_000)
    db.session.execute(insert(Transaction), rows)
    db.session.commit()
    transactions = [Transaction(**row) for row in rows]
    statements: list[str] = []

    def count_statements(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(RULE, min_size=0, max_size=8))
    def check(drawn: list[tuple[bool, list[dict[str, Any]]]]) -> None:
        rules = [loaded(i, enabled, conditions) for i, (enabled, conditions) in enumerate(drawn)] + [DEFAULT]
        statements.clear()
        event.listen(db.engine, "before_cursor_execute", count_statements)
        try:
            result = preview(db.session, organization_id, rules, now=NOW)
        finally:
            event.remove(db.engine, "before_cursor_execute", count_statements)
        # One query for the whole rule set (besides the setting that turns JIT off for it).
        assert [q for q in statements if not q.startswith("SET LOCAL")] == statements[-1:], statements
        counts, unmatched, amounts = expected_counts(rules, transactions)
        assert [tally.tally.count for tally in result.rules[:-1]] == counts[:-1]
        assert result.unmatched.count == unmatched == result.rules[-1].tally.count
        assert result.unmatched.amounts == amounts
        assert sum(counts) + unmatched == sum(1 for t in transactions if t.failed_at >= NOW - WINDOW)

    check()


def test_the_preview_agrees_on_a_small_set_on_both_databases(db: Any, org: Organization) -> None:
    rows = random_rows(org.id, 400, seed=7)
    db.session.execute(insert(Transaction), rows)
    db.session.commit()
    transactions = [Transaction(**row) for row in rows]

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(RULE, min_size=0, max_size=6))
    def check(drawn: list[tuple[bool, list[dict[str, Any]]]]) -> None:
        rules = [loaded(i, enabled, conditions) for i, (enabled, conditions) in enumerate(drawn)] + [DEFAULT]
        result = preview(db.session, org.id, rules, now=NOW)
        counts, unmatched, amounts = expected_counts(rules, transactions)
        assert [tally.tally.count for tally in result.rules[:-1]] == counts[:-1]
        assert (result.unmatched.count, result.unmatched.amounts) == (unmatched, amounts)

    check()


def test_the_saved_rules_preview_and_an_unsaved_set(
    db: Any, rules_org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    make_transaction(rules_org, failure_code="insufficient_funds", amount=1200, currency="usd")
    make_transaction(rules_org, failure_code="do_not_honor", amount=800, currency="eur")
    make_transaction(rules_org, failure_code="stolen_card", amount=5000, currency="usd")
    make_transaction(rules_org, failure_code="duplicate_transaction", amount=300, currency="usd")
    make_transaction(rules_org, failure_code="expired_card", amount=300, failed_at=NOW - timedelta(days=91))
    saved = preview(db.session, rules_org.id, now=NOW)
    assert [(t.rule.name, t.tally.count, t.tally.amounts) for t in saved.rules] == [
        ("Lost, stolen or fraud: do not contact", 1, {"usd": 5000}),
        ("Card may work again: retry it", 2, {"usd": 1200, "eur": 800}),
        ("New card needed: ask the customer", 0, {}),
        ("Everything else", 1, {"usd": 300}),
    ]
    assert (saved.unmatched.count, saved.unmatched.amounts) == (1, {"usd": 300})
    soft = campaign(db, rules_org, "soft_decline")
    unsaved = read_rule_set(
        db.session,
        rules_org.id,
        [
            {
                "name": "Dollars only",
                "conditions": [{"type": "currency_in", "values": ["usd"]}],
                "action": "start_campaign",
                "campaign_id": soft.id,
            }
        ],
    )
    result = preview(db.session, rules_org.id, unsaved, now=NOW)
    assert [(t.rule.name, t.tally.count) for t in result.rules] == [
        ("Dollars only", 3),
        ("Everything else", 1),
    ]
    assert result.unmatched.amounts == {"eur": 800}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (
            {"name": "x", "conditions": [{"type": "currency_in", "values": ["usd"]}], "colour": 1},
            "rules[0].colour",
        ),
        ({"name": "", "action": "hold_for_review"}, "rules[0].name"),
        ({"name": "x", "action": "start_campaign", "campaign_id": 999_999}, "rules[0].campaign_id"),
        (
            {"name": "x", "action": "hold_for_review", "conditions": [{"type": "amount"}]},
            "rules[0].conditions[0].currency",
        ),
        ({"name": "x", "action": "hold_for_review", "id": 999_999}, "rules[0].id"),
        ("rule", "rules[0]"),
    ],
)
def test_a_bad_unsaved_rule_set_names_the_field(
    db: Any, rules_org: Organization, raw: Any, field: str
) -> None:
    from recovery.rules.conditions import RuleRefused

    with pytest.raises(RuleRefused) as refused:
        read_rule_set(db.session, rules_org.id, [raw])
    assert refused.value.field == field


def test_explain_names_the_rule_and_why_each_rule_above_did_not_match(
    db: Any, rules_org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    transaction = make_transaction(rules_org, failure_code="expired_card")
    rules = load_rules(db.session, rules_org.id)
    explanation = explain(db.session, rules_org.id, transaction, now=NOW)
    assert explanation.matched is not None and explanation.matched.name == "New card needed: ask the customer"
    assert explanation.decision is not None and explanation.decision.action == RuleAction.START_CAMPAIGN
    assert [(s.rule.name, s.reason) for s in explanation.skipped] == [
        (
            rules[0].name,
            "the decline category is “Do not contact” does not hold: "
            "the decline category is “Customer must update card” (expired_card)",
        ),
        (
            rules[1].name,
            "the decline category is “Card may work again” does not hold: "
            "the decline category is “Customer must update card” (expired_card)",
        ),
    ]
    off = [LoadedRule(1, "Off", 1, False, False, (), "hold_for_review", None, None), *rules]
    explanation = explain(db.session, rules_org.id, transaction, off, now=NOW)
    assert explanation.skipped[0].reason == "the rule is off"
