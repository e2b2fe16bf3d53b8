"""The review queue: held transactions, approved with a campaign or dismissed with a reason, each audited."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from recovery.audit import Actor
from recovery.campaigns import builtin
from recovery.models import AuditEvent, Campaign, Organization, Transaction, TransactionStatus, utcnow
from recovery.refusals import Refused
from recovery.review import services as review

NOW = utcnow()


@pytest.fixture
def shop(db: Any, make_org: Callable[..., Organization]) -> Organization:
    organization = make_org(name="Acme Shop")
    builtin.install(db.session, organization)
    db.session.commit()
    return organization


def campaign_of(db: Any, organization: Organization, key: str = "customer_action") -> Campaign:
    found = db.session.scalar(
        select(Campaign).where(Campaign.organization_id == organization.id, Campaign.builtin == key)
    )
    assert found is not None
    return found


def held(
    db: Any, organization: Organization, make_transaction: Callable[..., Transaction], **fields: Any
) -> Transaction:
    at = fields.pop("held_at", NOW)
    transaction = make_transaction(organization, **fields)
    assert review.hold(db.session, transaction, Actor.system(organization.id), reason="Big amount.", now=at)
    db.session.commit()
    return transaction


def test_the_queue_lists_the_held_longest_waiting_first(
    db: Any,
    shop: Organization,
    make_org: Callable[..., Organization],
    make_transaction: Callable[..., Transaction],
) -> None:
    later = held(db, shop, make_transaction)
    first = make_transaction(shop)
    review.hold(db.session, first, Actor.system(shop.id), reason="x", now=NOW - timedelta(hours=1))
    other = make_org()
    held(db, other, make_transaction)
    make_transaction(shop)  # never held
    assert review.held(db.session, shop.id) == [first, later]
    # Held once: a second hold changes nothing.
    assert not review.hold(db.session, later, Actor.system(shop.id), reason="again", now=NOW)


def test_approve_starts_the_chosen_campaign_and_clears_the_hold(
    db: Any, shop: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    transaction = held(db, shop, make_transaction)
    chosen = campaign_of(db, shop)
    attempt = review.approve(
        db.session, transaction, Actor(shop.id, "ann@example.com"), campaign_id=chosen.id, now=NOW
    )
    db.session.commit()
    assert transaction.review_status == review.APPROVED and transaction.status == TransactionStatus.RECOVERING
    assert attempt.rule_id is None and attempt.decision == (
        f"Approved after review by ann@example.com: campaign “{chosen.name}”."
    )
    assert review.held(db.session, shop.id) == []
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "transaction.review_approved"))
    assert (
        event is not None
        and event.details["campaign_id"] == chosen.id
        and event.actor_label == "ann@example.com"
    )


def test_approve_refuses_another_organizations_or_an_archived_campaign(
    db: Any,
    shop: Organization,
    make_org: Callable[..., Organization],
    make_transaction: Callable[..., Transaction],
) -> None:
    transaction = held(db, shop, make_transaction)
    other = make_org()
    builtin.install(db.session, other)
    archived = campaign_of(db, shop, "soft_decline")
    archived.archived_at = NOW
    db.session.commit()
    for campaign_id in (campaign_of(db, other).id, archived.id, 10**9):
        with pytest.raises(Refused) as refused:
            review.approve(db.session, transaction, Actor.system(shop.id), campaign_id=campaign_id, now=NOW)
        assert refused.value.status == 422 and refused.value.field == "campaign_id"
        db.session.rollback()
    assert db.session.get(Transaction, transaction.id).review_status == review.HELD


def test_dismiss_needs_a_reason_and_is_audited(
    db: Any, shop: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    transaction = held(db, shop, make_transaction)
    with pytest.raises(Refused) as refused:
        review.dismiss(db.session, transaction, Actor.system(shop.id), now=NOW, reason="  ")
    assert refused.value.field == "reason"
    review.dismiss(
        db.session, transaction, Actor.system(shop.id), now=NOW, reason="Customer paid by bank transfer."
    )
    db.session.commit()
    assert (transaction.review_status, transaction.review_reason) == (
        review.DISMISSED,
        "Customer paid by bank transfer.",
    )
    assert transaction.status == TransactionStatus.FAILED
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "transaction.review_dismissed"))
    assert event is not None and event.details["reason"] == "Customer paid by bank transfer."


def test_only_a_held_transaction_can_be_approved_or_dismissed(
    db: Any, shop: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    transaction = make_transaction(shop)
    with pytest.raises(Refused) as approve:
        review.approve(
            db.session, transaction, Actor.system(shop.id), campaign_id=campaign_of(db, shop).id, now=NOW
        )
    with pytest.raises(Refused) as dismiss:
        review.dismiss(db.session, transaction, Actor.system(shop.id), now=NOW, reason="x")
    assert approve.value.status == dismiss.value.status == 409
