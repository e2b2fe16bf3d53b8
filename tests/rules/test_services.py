"""The rule set: order, the default, versions, tenancy, and `decide` (the first enabled match wins)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import AuditEvent, Organization, RecoveryRule, RuleAction, Transaction, utcnow
from recovery.rules import services as rules
from recovery.rules.conditions import RuleRefused
from tests.rules.conftest import campaign, rules_of

NOW = utcnow()


def actor(org: Organization) -> Actor:
    return Actor(org.id, "ann@example.com")


def hold_rule(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "Big ones: review",
        "conditions": [{"type": "amount", "currency": "usd", "min": 100_000, "max": None}],
        "action": RuleAction.HOLD_FOR_REVIEW,
        "reason": "Over $1,000: staff call the customer.",
        **overrides,
    }


def test_a_new_rule_goes_just_above_the_default(db: Any, rules_org: Organization) -> None:
    version = rules_org.rules_version
    rule = rules.create_rule(db.session, rules_org.id, actor(rules_org), hold_rule(), now=NOW)
    db.session.commit()
    ordered = rules.list_rules(db.session, rules_org.id)
    assert [r.position for r in ordered] == list(range(len(ordered)))
    assert ordered[-1].is_default and ordered[-2].id == rule.id
    assert rule.version == 1 and rule.enabled
    assert rules_org.rules_version == version + 1
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "rule.created"))
    assert event is not None and event.target_id == str(rule.id)


def test_an_edit_adds_a_version_and_a_stale_one_gets_409(db: Any, rules_org: Organization) -> None:
    rule = rules.create_rule(db.session, rules_org.id, actor(rules_org), hold_rule(), now=NOW)
    db.session.commit()
    rules.update_rule(
        db.session, rule, actor(rules_org), {"name": "Review big ones"}, now=NOW, expected_version=1
    )
    db.session.commit()
    assert (rule.version, rule.name) == (2, "Review big ones")
    with pytest.raises(RuleRefused) as stale:
        rules.update_rule(db.session, rule, actor(rules_org), {"enabled": False}, now=NOW, expected_version=1)
    assert stale.value.status == 409
    db.session.rollback()
    assert rule.enabled and rule.version == 2
    # Nothing changed, nothing counted.
    rules.update_rule(
        db.session, rule, actor(rules_org), {"name": "Review big ones"}, now=NOW, expected_version=2
    )
    assert rule.version == 2


def test_the_default_cannot_be_deleted_disabled_or_given_conditions(db: Any, rules_org: Organization) -> None:
    default = rules_of(db, rules_org)[-1]
    assert default.is_default
    with pytest.raises(RuleRefused) as deleted:
        rules.delete_rule(db.session, default, actor(rules_org), now=NOW)
    assert deleted.value.status == 409
    db.session.rollback()
    for change, field in (
        ({"enabled": False}, "enabled"),
        ({"conditions": [{"type": "has_email", "value": True}]}, "conditions"),
    ):
        with pytest.raises(RuleRefused) as refused:
            rules.update_rule(db.session, default, actor(rules_org), change, now=NOW)
        assert refused.value.field == field
        db.session.rollback()
    # Its action may change: everything else held for review.
    rules.update_rule(db.session, default, actor(rules_org), {"action": RuleAction.HOLD_FOR_REVIEW}, now=NOW)
    assert default.campaign_id is None and default.version == 2


def test_delete_renumbers_and_reorder_keeps_the_default_last(db: Any, rules_org: Organization) -> None:
    first, second, third, default = rules_of(db, rules_org)
    rules.delete_rule(db.session, second, actor(rules_org), now=NOW, expected_version=1)
    db.session.commit()
    assert [r.id for r in rules.list_rules(db.session, rules_org.id)] == [first.id, third.id, default.id]
    assert [r.position for r in rules.list_rules(db.session, rules_org.id)] == [0, 1, 2]
    version = rules_org.rules_version
    rules.reorder(
        db.session,
        rules_org.id,
        actor(rules_org),
        [third.id, first.id],
        now=NOW,
        expected_rules_version=version,
    )
    db.session.commit()
    assert [r.id for r in rules.list_rules(db.session, rules_org.id)] == [third.id, first.id, default.id]
    assert rules_org.rules_version == version + 1
    with pytest.raises(RuleRefused) as stale:
        rules.reorder(
            db.session,
            rules_org.id,
            actor(rules_org),
            [first.id, third.id],
            now=NOW,
            expected_rules_version=version,
        )
    assert stale.value.status == 409
    db.session.rollback()


@pytest.mark.parametrize(
    "ids",
    [
        "1,2",
        [1.5],
        [True],
        "missing",
        "default_first",
        "duplicate",
        "unknown",
    ],
)
def test_a_bad_order_is_refused(db: Any, rules_org: Organization, ids: Any) -> None:
    first, second, third, default = rules_of(db, rules_org)
    chosen = (
        {
            "missing": [first.id, second.id],
            "default_first": [default.id, first.id, second.id, third.id],
            "duplicate": [first.id, first.id, second.id, third.id],
            "unknown": [first.id, second.id, third.id, 999_999],
        }.get(ids, ids)
        if isinstance(ids, str)
        else ids
    )
    with pytest.raises(RuleRefused) as refused:
        rules.reorder(db.session, rules_org.id, actor(rules_org), chosen, now=NOW)
    assert refused.value.field == "ids" and refused.value.status == 422


def test_the_default_may_end_the_order(db: Any, rules_org: Organization) -> None:
    first, second, third, default = rules_of(db, rules_org)
    rules.reorder(
        db.session, rules_org.id, actor(rules_org), [second.id, first.id, third.id, default.id], now=NOW
    )
    assert [r.id for r in rules.list_rules(db.session, rules_org.id)] == [
        second.id,
        first.id,
        third.id,
        default.id,
    ]


BAD_RULES: list[tuple[dict[str, Any], str]] = [
    ({"name": ""}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": 5}, "name"),
    ({"enabled": "yes"}, "enabled"),
    ({"action": "email_everyone"}, "action"),
    ({"action": RuleAction.START_CAMPAIGN}, "campaign_id"),
    ({"action": RuleAction.START_CAMPAIGN, "campaign_id": "soft"}, "campaign_id"),
    ({"action": RuleAction.START_CAMPAIGN, "campaign_id": 999_999}, "campaign_id"),
    ({"conditions": [{"type": "country_in", "values": ["ZZ"]}]}, "conditions[0].values"),
    ({"conditions": {"type": "has_email"}}, "conditions"),
    ({"reason": "x" * 501}, "reason"),
    ({"colour": "red"}, "colour"),
    ({"position": 0}, "position"),
]


@pytest.mark.parametrize(("change", "field"), BAD_RULES)
def test_a_bad_rule_is_refused_naming_the_field_and_nothing_is_saved(
    db: Any, rules_org: Organization, change: dict[str, Any], field: str
) -> None:
    before = len(rules_of(db, rules_org))
    with pytest.raises(RuleRefused) as refused:
        rules.create_rule(db.session, rules_org.id, actor(rules_org), hold_rule(**change), now=NOW)
    assert refused.value.field == field and refused.value.status == 422
    db.session.rollback()
    assert len(rules_of(db, rules_org)) == before


def test_another_organizations_rule_and_campaign_are_not_found(
    db: Any, rules_org: Organization, make_rules_org: Callable[..., Organization]
) -> None:
    other = make_rules_org()
    theirs = rules_of(db, other)[0]
    with pytest.raises(RuleRefused) as missing:
        rules.get_rule(db.session, rules_org.id, theirs.id)
    assert missing.value.status == 404
    their_campaign = campaign(db, other, "soft_decline")
    with pytest.raises(RuleRefused) as refused:
        rules.create_rule(
            db.session,
            rules_org.id,
            actor(rules_org),
            hold_rule(action=RuleAction.START_CAMPAIGN, campaign_id=their_campaign.id),
            now=NOW,
        )
    assert refused.value.field == "campaign_id" and refused.value.status == 422


def test_an_archived_campaign_cannot_be_chosen(db: Any, rules_org: Organization) -> None:
    soft = campaign(db, rules_org, "soft_decline")
    soft.archived_at = NOW
    db.session.commit()
    with pytest.raises(RuleRefused) as refused:
        rules.create_rule(
            db.session,
            rules_org.id,
            actor(rules_org),
            hold_rule(action="start_campaign", campaign_id=soft.id),
            now=NOW,
        )
    assert "archived" in refused.value.message


def test_decide_takes_the_first_enabled_match(
    db: Any, rules_org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    stolen = make_transaction(rules_org, failure_code="stolen_card")
    funds = make_transaction(rules_org, failure_code="insufficient_funds")
    other = make_transaction(rules_org, failure_code="duplicate_transaction")
    lost, soft, _customer, default = rules_of(db, rules_org)
    decision = rules.decide(db.session, stolen, now=NOW)
    assert decision is not None
    assert (decision.action, decision.rule_id, decision.rule_version) == (
        RuleAction.DO_NOT_RECOVER,
        lost.id,
        1,
    )
    assert decision.reason and "not contacted" in decision.reason
    funds_decision = rules.decide(db.session, funds, now=NOW)
    assert funds_decision is not None and funds_decision.campaign_id == soft.campaign_id
    assert funds_decision.sentence == (
        "Rule “Card may work again: retry it” matched: "
        "the decline category is “Card may work again” (insufficient_funds)."
    )
    other_decision = rules.decide(db.session, other, now=NOW)
    assert other_decision is not None and other_decision.rule_id == default.id
    assert other_decision.sentence == "Rule “Everything else” matched: no rule above it applies."
    # A rule that is off is passed over; a rule above wins over one below.
    rules.update_rule(db.session, lost, actor(rules_org), {"enabled": False}, now=NOW)
    rules.create_rule(db.session, rules_org.id, actor(rules_org), hold_rule(conditions=[]), now=NOW)
    decision = rules.decide(db.session, stolen, now=NOW)
    assert decision is not None and decision.rule_name == "Big ones: review"
    assert decision.action == RuleAction.HOLD_FOR_REVIEW


def test_an_organization_without_rules_decides_nothing(
    db: Any, org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    assert rules.decide(db.session, make_transaction(org), now=NOW) is None
    assert db.session.scalar(select(RecoveryRule.id).where(RecoveryRule.organization_id == org.id)) is None
