"""The review queue's page: held failures with why, approved with a campaign or dismissed (issue 18)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.audit import Actor
from recovery.campaigns import builtin
from recovery.models import AuditEvent, Campaign, Organization, RecoveryAttempt, Transaction, User, utcnow
from recovery.review import services as review
from tests.conftest import csrf_token


@pytest.fixture
def held(
    db: Any, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> Transaction:
    user = signed_in("operator")
    builtin.install(db.session, user.organization)
    transaction = make_transaction(
        org=user.organization, transaction_ref="HELD-1", amount=250000, failure_code="do_not_honor"
    )
    actor = Actor.system(user.organization_id)
    review.hold(db.session, transaction, actor, reason="Large amount: call the customer first", now=utcnow())
    db.session.commit()
    return transaction


def soft_campaign(db: Any, transaction: Transaction) -> Campaign:
    return db.session.scalar(
        select(Campaign).where(
            Campaign.organization_id == transaction.organization_id, Campaign.builtin == builtin.SOFT_DECLINE
        )
    )


def test_the_queue_lists_held_transactions_with_why(client: FlaskClient, held: Transaction) -> None:
    page = client.get("/review/").get_data(as_text=True)
    assert "HELD-1" in page
    assert "Large amount: call the customer first" in page
    assert "Card may work again" in page
    assert "$2,500.00" in page
    detail = client.get(f"/transactions/{held.id}").get_data(as_text=True)
    assert "Held for review." in detail and "Open the review queue" in detail


def test_approve_starts_the_chosen_campaign(client: FlaskClient, db: Any, held: Transaction) -> None:
    token = csrf_token(client.get("/review/").get_data(as_text=True))
    campaign = soft_campaign(db, held)
    response = client.post(
        f"/review/{held.id}/approve", data={"csrf_token": token, "campaign_id": campaign.id}
    )
    assert response.status_code == 302
    db.session.expire_all()
    assert held.review_status == review.APPROVED
    attempt = db.session.scalar(select(RecoveryAttempt).where(RecoveryAttempt.transaction_id == held.id))
    assert attempt is not None
    assert 'id="held-' not in client.get("/review/").get_data(as_text=True)


@pytest.mark.parametrize(
    ("action", "data", "error_id", "words"),
    [
        ("approve", {"campaign_id": ""}, "campaign-{id}-error", "Choose the campaign to start."),
        ("approve", {"campaign_id": "999999"}, "campaign-{id}-error", "There is no campaign 999999."),
        ("dismiss", {"reason": "  "}, "reason-{id}-error", "Say why the transaction is dismissed."),
    ],
)
def test_bad_input_is_answered_next_to_the_field_and_the_transaction_stays_held(
    client: FlaskClient,
    db: Any,
    held: Transaction,
    action: str,
    data: dict[str, str],
    error_id: str,
    words: str,
) -> None:
    token = csrf_token(client.get("/review/").get_data(as_text=True))
    response = client.post(f"/review/{held.id}/{action}", data={"csrf_token": token, **data})
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert error_id.format(id=held.id) in page and words in page
    db.session.expire_all()
    assert held.review_status == review.HELD


def test_dismiss_keeps_the_reason_and_audits(client: FlaskClient, db: Any, held: Transaction) -> None:
    token = csrf_token(client.get("/review/").get_data(as_text=True))
    response = client.post(f"/review/{held.id}/dismiss", data={"csrf_token": token, "reason": "Paid by wire"})
    assert response.status_code == 302
    db.session.expire_all()
    assert (held.review_status, held.review_reason) == (review.DISMISSED, "Paid by wire")
    assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "transaction.review_dismissed"))
    again = client.post(
        f"/review/{held.id}/dismiss", data={"csrf_token": token, "reason": "x"}, follow_redirects=True
    )
    assert "is not waiting for review" in again.get_data(as_text=True)


def test_a_viewer_reads_the_queue_but_cannot_decide(
    client: FlaskClient, db: Any, held: Transaction, signed_in: Callable[..., User]
) -> None:
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/review/").get_data(as_text=True))})
    signed_in("viewer", org=db.session.get(Organization, held.organization_id))
    page = client.get("/review/").get_data(as_text=True)
    assert "HELD-1" in page and "Approve" not in page
    response = client.post(f"/review/{held.id}/dismiss", data={"csrf_token": csrf_token(page), "reason": "x"})
    assert response.status_code == 403
