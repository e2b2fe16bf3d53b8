"""Every start made without a campaign or schedule follows the rules: each action, each path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import (
    AuditEvent,
    BulkStart,
    CampaignVersion,
    Organization,
    RecoveryAttempt,
    RuleAction,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.recoveries import automatic, bulk
from recovery.recoveries.refusals import RecoveryRefused
from recovery.review import services as review
from recovery.rules import services as rules
from recovery.rules.starting import start_by_rules
from tests.rules.conftest import campaign, rules_of

NOW = utcnow()


def actor(org: Organization) -> Actor:
    return Actor(org.id, "ann@example.com")


def test_start_campaign_records_the_rule_and_the_campaign_version(
    db: Any, rules_org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    transaction = make_transaction(rules_org, failure_code="expired_card", no_recovery_reason="old")
    started = start_by_rules(db.session, transaction, actor(rules_org), now=NOW)
    db.session.commit()
    assert started.outcome == "started" and started.attempt is not None
    rule = rules_of(db, rules_org)[2]
    attempt = started.attempt
    assert (attempt.rule_id, attempt.rule_name, attempt.rule_version) == (rule.id, rule.name, 1)
    version = db.session.get(CampaignVersion, attempt.campaign_version_id)
    assert version is not None and version.campaign_id == campaign(db, rules_org, "customer_action").id
    assert attempt.decision == (
        "Rule “New card needed: ask the customer” matched: "
        "the decline category is “Customer must update card” (expired_card)."
    )
    assert transaction.status == TransactionStatus.RECOVERING and transaction.no_recovery_reason is None


def test_do_not_recover_marks_the_transaction_and_sends_nothing(
    db: Any, rules_org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    transaction = make_transaction(rules_org, failure_code="lost_card")
    started = start_by_rules(db.session, transaction, actor(rules_org), now=NOW)
    db.session.commit()
    assert started.outcome == "not_recovered" and started.attempt is None
    assert transaction.no_recovery_reason and "not contacted" in transaction.no_recovery_reason
    assert transaction.status == TransactionStatus.FAILED
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "recovery.not_recovered_by_rule"))
    assert event is not None and event.details["rule_name"] == "Lost, stolen or fraud: do not contact"
    assert event.details["summary"].startswith("Rule “Lost, stolen or fraud: do not contact” matched")


def test_hold_for_review_puts_it_in_the_queue(
    db: Any, rules_org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    default = rules_of(db, rules_org)[-1]
    rules.update_rule(
        db.session,
        default,
        actor(rules_org),
        {"action": RuleAction.HOLD_FOR_REVIEW, "reason": "Look first."},
        now=NOW,
    )
    transaction = make_transaction(rules_org, failure_code="duplicate_transaction")
    started = start_by_rules(db.session, transaction, actor(rules_org), now=NOW)
    db.session.commit()
    assert started.outcome == "held"
    assert (transaction.review_status, transaction.review_reason) == (review.HELD, "Look first.")
    assert review.held(db.session, rules_org.id) == [transaction]
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "transaction.held_for_review"))
    assert event is not None and (event.details["rule_id"], event.details["rule_version"]) == (default.id, 2)


@pytest.mark.parametrize("code", ["lost_card", "expired_card", "duplicate_transaction"])
def test_a_paid_or_running_transaction_is_refused_whatever_the_action(
    db: Any, rules_org: Organization, make_transaction: Callable[..., Transaction], code: str
) -> None:
    paid = make_transaction(rules_org, failure_code=code, status=TransactionStatus.RECOVERED)
    with pytest.raises(RecoveryRefused) as refused:
        start_by_rules(db.session, paid, actor(rules_org), now=NOW)
    assert refused.value.status == 409
    assert paid.no_recovery_reason is None and paid.review_status is None


def test_without_rules_the_start_is_todays(
    db: Any, org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    transaction = make_transaction(org, failure_code="stolen_card")
    started = start_by_rules(db.session, transaction, actor(org), now=NOW)
    assert started.decision is None and started.attempt is not None
    assert started.attempt.campaign_version_id is None and started.attempt.schedule == "0,1,3,6"


def test_the_automatic_start_follows_the_rules(
    db: Any, make_rules_org: Callable[..., Organization], make_transaction: Callable[..., Transaction]
) -> None:
    org = make_rules_org(auto_start_recoveries=True)
    stolen = make_transaction(org, failure_code="stolen_card", source="stripe")
    funds = make_transaction(org, failure_code="insufficient_funds", source="stripe")
    assert automatic.auto_start(db.session, stolen.id, now=NOW).outcome == "not_recovered"
    result = automatic.auto_start(db.session, funds.id, now=NOW)
    assert result.outcome == "started" and result.attempt is not None
    assert result.attempt.rule_name == "Card may work again: retry it"


def test_a_bulk_start_decides_each_by_the_rules(
    db: Any, rules_org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    chosen = [
        make_transaction(rules_org, failure_code=code)
        for code in ("insufficient_funds", "stolen_card", "expired_card", "insufficient_funds")
    ]
    job = bulk.create(db.session, actor(rules_org), [t.id for t in chosen], "any")
    db.session.commit()
    bulk.run(db.session, job.id)
    done = db.session.get(BulkStart, job.id)
    assert done is not None and (done.started, done.refused) == (3, 1)
    assert done.reasons == {"Not recovered by rule “Lost, stolen or fraud: do not contact”": 1}
    names = db.session.scalars(select(RecoveryAttempt.rule_name).order_by(RecoveryAttempt.id)).all()
    assert names == [
        "Card may work again: retry it",
        "New card needed: ask the customer",
        "Card may work again: retry it",
    ]


def test_an_imports_start_recoveries_follows_the_rules(
    db: Any, rules_org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    from recovery.imports.starting import start_recoveries
    from recovery.models import CsvImport, ImportStatus

    done = CsvImport(organization_id=rules_org.id, filename="july.csv", status=ImportStatus.DONE)
    db.session.add(done)
    db.session.commit()
    stolen = make_transaction(rules_org, failure_code="stolen_card", source="csv", import_id=done.id)
    funds = make_transaction(rules_org, failure_code="insufficient_funds", source="csv", import_id=done.id)
    make_transaction(rules_org, failure_code="insufficient_funds", source="csv")  # another import's
    make_transaction(
        rules_org, failure_code="insufficient_funds", import_id=done.id, status=TransactionStatus.RECOVERED
    )
    starts = start_recoveries(db.session, actor(rules_org), done)
    db.session.commit()
    assert [s.transaction_ids for s in starts] == [[stolen.id, funds.id]]
    bulk.run(db.session, starts[0].id)
    assert db.session.get(Transaction, stolen.id).no_recovery_reason
    attempt = db.session.scalar(select(RecoveryAttempt).where(RecoveryAttempt.transaction_id == funds.id))
    assert attempt is not None and attempt.rule_name == "Card may work again: retry it"
    with pytest.raises(bulk.BulkRefused) as nothing_left:
        start_recoveries(db.session, actor(rules_org), done)
    assert nothing_left.value.status == 409
    running = CsvImport(organization_id=rules_org.id, filename="aug.csv", status=ImportStatus.RUNNING)
    db.session.add(running)
    db.session.flush()
    with pytest.raises(bulk.BulkRefused):
        start_recoveries(db.session, actor(rules_org), running)
