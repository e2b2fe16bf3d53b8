"""The dashboard's start: which rule would match and what it would do, another campaign instead,
and the timeline naming the rule, why, and the campaign's version (issue 18)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.campaigns import builtin
from recovery.models import Campaign, CampaignVersion, RecoveryAttempt, Transaction, User
from tests.conftest import csrf_token


@pytest.fixture
def operator(db: Any, signed_in: Callable[..., User]) -> User:
    user = signed_in("operator")
    builtin.install(db.session, user.organization)
    db.session.commit()
    return user


def start(client: FlaskClient, transaction: Transaction, **values: str) -> str:
    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)
    data = {"csrf_token": csrf_token(page), "channels": "email", **values}
    response = client.post(f"/transactions/{transaction.id}/recoveries", data=data, follow_redirects=True)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def attempt_of(db: Any, transaction: Transaction) -> RecoveryAttempt | None:
    db.session.expire_all()
    return db.session.scalar(select(RecoveryAttempt).where(RecoveryAttempt.transaction_id == transaction.id))


def test_the_start_shows_the_rule_that_would_match_and_the_timeline_names_it(
    client: FlaskClient, db: Any, operator: User, make_transaction: Callable[..., Transaction]
) -> None:
    transaction = make_transaction(org=operator.organization, failure_code="insufficient_funds")
    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)
    assert "The rules say:" in page
    assert "Card may work again: retry it" in page
    assert "Keep the rules&#39; choice" in page or "Keep the rules' choice" in page
    page = start(client, transaction)
    attempt = attempt_of(db, transaction)
    assert attempt is not None and attempt.rule_name == "Card may work again: retry it"
    # The timeline: which rule matched and why, and the campaign with its version.
    assert "Rule “Card may work again: retry it” matched" in page
    assert "”, version 1: " in page
    assert "chosen by rule" in page
    # The attempts table names the campaign, its version and the rule.
    attempts = page.split("Recovery attempts")[1].split("Timeline")[0]
    assert ", version 1" in attempts and "rule “<bdi>Card may work again: retry it</bdi>”" in attempts


def test_an_operator_chooses_another_campaign(
    client: FlaskClient, db: Any, operator: User, make_transaction: Callable[..., Transaction]
) -> None:
    transaction = make_transaction(org=operator.organization, failure_code="insufficient_funds")
    other = db.session.scalar(
        select(Campaign).where(
            Campaign.organization_id == operator.organization_id,
            Campaign.builtin == builtin.CUSTOMER_ACTION_CAMPAIGN,
        )
    )
    page = start(client, transaction, campaign=str(other.id))
    attempt = attempt_of(db, transaction)
    assert attempt is not None and attempt.rule_name is None
    version = db.session.get(CampaignVersion, attempt.campaign_version_id)
    assert version.campaign_id == other.id
    assert f"Campaign “{other.name}” chosen by {operator.email} at the start." in page


def test_a_do_not_recover_rule_is_explained_and_nothing_starts(
    client: FlaskClient, db: Any, operator: User, make_transaction: Callable[..., Transaction]
) -> None:
    transaction = make_transaction(org=operator.organization, failure_code="stolen_card")
    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)
    assert "Nothing is sent: the transaction is marked as not recovered" in page
    page = start(client, transaction)
    assert "No recovery started" in page
    assert attempt_of(db, transaction) is None
    assert "Not recovered: a rule says so" in page  # the timeline
    assert "the customer is not contacted" in page


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"campaign": "999999"}, "There is no campaign 999999."),
        ({"campaign": "abc"}, "There is no campaign -1."),
    ],
)
def test_a_bad_campaign_is_refused_and_nothing_starts(
    client: FlaskClient,
    db: Any,
    operator: User,
    make_transaction: Callable[..., Transaction],
    values: dict[str, str],
    words: str,
) -> None:
    transaction = make_transaction(org=operator.organization, failure_code="insufficient_funds")
    page = start(client, transaction, **values)
    assert words in page
    assert attempt_of(db, transaction) is None


def test_a_campaign_and_a_schedule_together_are_refused(
    client: FlaskClient, db: Any, operator: User, make_transaction: Callable[..., Transaction]
) -> None:
    transaction = make_transaction(org=operator.organization, failure_code="insufficient_funds")
    campaign = db.session.scalar(select(Campaign).where(Campaign.organization_id == operator.organization_id))
    page = start(client, transaction, campaign=str(campaign.id), schedule="0,2")
    assert "Choose a campaign or type a schedule, not both." in page
    assert attempt_of(db, transaction) is None


def test_without_rules_the_start_is_as_before(
    client: FlaskClient, db: Any, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("operator")
    transaction = make_transaction(org=user.organization)
    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)
    assert "The rules say" not in page and "Empty: the organization's schedule" in page
    start(client, transaction)
    attempt = attempt_of(db, transaction)
    assert attempt is not None and attempt.campaign_version_id is None
