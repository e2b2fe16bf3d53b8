"""A campaign's card-retry step run by the real engine and worker: a card that needs its holder falls back
to the next message; a declined one lets the campaign go on. The sandbox answers; real SMTP receives.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from recovery.audit import Actor
from recovery.campaigns import services
from recovery.extensions import db as _db
from recovery.models import AuditEvent, Organization, RecoveryAttempt, Transaction, utcnow
from recovery.models.card_retry import RetryStatus
from recovery.recoveries import lifecycle
from tests.fixtures.fakes import _twilio_server, fake_twilio, providers_config, smtp_server
from tests.payments.card_retry_helpers import AUTH_ALWAYS, INSUFFICIENT, failed_payment, reload, retries_of

__all__ = ["_twilio_server", "fake_twilio", "smtp_server"]


@pytest.fixture
def app_config(stripe_sandbox: Any, smtp_server: Any, fake_twilio: Any) -> dict[str, Any]:
    stripe_sandbox.reset()
    return {
        **providers_config(smtp_server, fake_twilio),
        "STRIPE_SECRET_KEY": stripe_sandbox.api_key,
        "STRIPE_API_BASE": stripe_sandbox.base_url,
    }


def step(action: str, hours: int = 0) -> dict[str, Any]:
    return {"action": action, "delay_hours": hours, "after": "previous"}


def started(org: Organization, txn: Transaction, steps: list[dict[str, Any]]) -> int:
    made = services.create(
        _db.session,
        org,
        Actor.system(org.id),
        {"name": "Retry first", "steps": steps, "link_lifetime_days": 5},
    )
    _db.session.commit()
    attempt = lifecycle.start_recovery(
        _db.session,
        txn,
        Actor.system(org.id, "test"),
        now=utcnow(),
        campaign_version=services.current_version(_db.session, made),
    ).attempt
    _db.session.commit()
    return attempt.id


def saved_card_transaction(
    stripe_sandbox: Any, make_org: Any, make_transaction: Any, number: str, code: str
) -> Any:
    intent_id, customer_id, pm_id = failed_payment(stripe_sandbox, number)
    org = make_org(reply_to_email="billing@acme.example")
    txn = make_transaction(
        org,
        customer_email="cy@example.com",
        customer_phone=None,
        failure_code=code,
        failed_at=utcnow() - timedelta(days=2),
        source="stripe",
        stripe_payment_intent_id=intent_id,
        stripe_customer_id=customer_id,
        stripe_payment_method_id=pm_id,
    )
    return org, txn


def work_all(rq_worker: Callable[[], None], rounds: int = 3) -> None:
    """A few bursts: the send job queues the retry, the retry places the next send."""
    for _ in range(rounds):
        _db.session.commit()
        _db.session.remove()
        rq_worker()


def test_authentication_required_skips_to_the_next_message(
    stripe_sandbox, make_org, make_transaction, rq_worker, smtp_server
):
    org, txn = saved_card_transaction(
        stripe_sandbox, make_org, make_transaction, AUTH_ALWAYS, "authentication_required"
    )
    txn_id = txn.id
    # A retry now, another in a day, then the email a day after that: the authentication skips ahead.
    attempt_id = started(org, txn, [step("retry_card"), step("retry_card", 24), step("email", 24)])

    work_all(rq_worker)

    [retry] = retries_of(txn_id)
    assert (retry.step, retry.status) == (0, RetryStatus.REQUIRES_ACTION)
    assert len(smtp_server.to("cy@example.com")) == 1  # the pay link, now, not in two days
    assert reload(RecoveryAttempt, attempt_id).step == 3
    actions = list(
        _db.session.scalars(
            select(AuditEvent.action).where(AuditEvent.transaction_id == txn_id).order_by(AuditEvent.id)
        )
    )
    assert actions.index("card_retry.requires_action") < actions.index("recovery.skipped_to_message")


def test_a_declined_retry_lets_the_campaign_go_on(
    stripe_sandbox, make_org, make_transaction, rq_worker, smtp_server
):
    org, txn = saved_card_transaction(
        stripe_sandbox, make_org, make_transaction, INSUFFICIENT, "card_declined"
    )
    txn_id = txn.id
    attempt_id = started(org, txn, [step("retry_card"), step("email", 24)])

    work_all(rq_worker)

    [retry] = retries_of(txn_id)
    assert (retry.status, retry.decline_code) == (RetryStatus.DECLINED, "insufficient_funds")
    assert reload(Transaction, txn_id).failure_code == "insufficient_funds"
    attempt = reload(RecoveryAttempt, attempt_id)
    assert attempt.step == 1 and attempt.next_send_at is not None
    assert attempt.next_send_at > utcnow() + timedelta(hours=23)  # the email waits its day
    assert smtp_server.to("cy@example.com") == []
