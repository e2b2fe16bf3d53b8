"""When the engine stops messaging a customer, and what it leaves working.

An opt-out stops the messages, not the link the customer already has, and
does not switch them to the other channel; a backlog does not send the
overdue steps seconds apart; a payment settling at Stripe holds the
reminders. Sends go through the real send path to aiosmtpd and the fake
Twilio, each with its instant passed explicitly (`now=`); nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from recovery.audit import Actor
from recovery.messaging import contacts, sender
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    CheckoutSession,
    CheckoutStatus,
    Message,
    Organization,
    RecoveryAttempt,
    SuppressionReason,
    Transaction,
    TransactionStatus,
    WebhookEvent,
    utcnow,
)
from recovery.recoveries import answers, claims, lifecycle, schedule, sending
from tests.fixtures.fakes import _twilio_server, fake_twilio, providers_config, smtp_server

__all__ = ["_twilio_server", "fake_twilio", "smtp_server"]

A = AttemptStatus
PHONE = "+14155550123"
# Any fixed instant will do where no page is opened (the pages read the real clock).
START = datetime(2025, 1, 15, 13, tzinfo=UTC)


@pytest.fixture
def app_config(smtp_server: Any, fake_twilio: Any) -> dict[str, Any]:
    return providers_config(smtp_server, fake_twilio)


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    # The defaults, spelled out: the tests depend on them.
    return make_org(
        name="Acme Shop", recovery_schedule="0,1,3,6", attempt_lifetime_days=7, fallback_channels="email,sms"
    )


def start(db: Any, transaction: Transaction, now: datetime, **options: Any) -> RecoveryAttempt:
    started = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id, "test"), now=now, **options
    )
    db.session.commit()
    return started.attempt


def send(db: Any, attempt_id: int, now: datetime) -> answers.SendResult:
    """Run the attempt's current step as its send job would, at `now`."""
    db.session.expire_all()
    attempt = db.session.get(RecoveryAttempt, attempt_id)
    assert attempt is not None
    return sending.send_due(
        db.session, sender.postman(), attempt_id, attempt.step, base_url="http://localhost", now=now
    )


def send_all_due(db: Any, now: datetime) -> None:
    """What the sweeper and workers do at `now`: send whatever is due, until nothing is."""
    for _ in range(schedule.MAX_STEPS + 1):
        due = claims.due_attempts(db.session, now)
        db.session.rollback()
        if not due:
            return
        for attempt_id, _step, _due in due:
            send(db, attempt_id, now)
    raise AssertionError("still due after every step was sent")


def messages(db: Any, attempt_id: int) -> list[Message]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(Message).where(Message.attempt_id == attempt_id).order_by(Message.step, Message.id)
        )
    )


def attempt_of(db: Any, attempt_id: int) -> RecoveryAttempt:
    db.session.expire_all()
    attempt = db.session.get(RecoveryAttempt, attempt_id)
    assert attempt is not None
    return attempt


def opt_out(client: Any, db: Any, attempt: RecoveryAttempt, channel: str) -> None:
    """The customer opts out: the one-click unsubscribe link for email, STOP for SMS."""
    if channel == "email":
        response = client.post(f"/pay/{attempt.token}/unsubscribe", data={"List-Unsubscribe": "One-Click"})
        assert response.status_code == 200
    else:
        # What the inbound STOP webhook records (tests/messaging/test_twilio_hooks.py covers the webhook).
        contacts.suppress(db.session, attempt.organization_id, "sms", PHONE, SuppressionReason.OPTED_OUT)
        db.session.commit()


# --- an opt-out stops the messages, not the link -----------------------------------------------


def test_unsubscribing_stops_the_messages_but_the_link_still_pays(
    client, db, org, make_transaction, smtp_server
):
    transaction = make_transaction(org, customer_email="ann@example.com", customer_phone=None)
    started_at = utcnow()  # the pay page reads the real clock
    attempt = start(db, transaction, started_at)
    attempt_id, token = attempt.id, attempt.token
    assert send(db, attempt_id, started_at).outcome == "sent"
    assert len(smtp_server.received) == 1

    opt_out(client, db, attempt, "email")
    result = send(db, attempt_id, started_at + timedelta(days=1))

    assert result.outcome == "no_channel"
    assert len(smtp_server.received) == 1
    assert [m.step for m in messages(db, attempt_id)] == [0]
    attempt = attempt_of(db, attempt_id)
    assert attempt.status == A.NOTIFIED and attempt.next_send_at == attempt.expires_at
    assert db.session.get(Transaction, transaction.id).status == TransactionStatus.RECOVERING
    # The link the customer holds still works, as the unsubscribe page promised.
    assert client.get(f"/pay/{token}").status_code == 200
    # And the timeline says why the reminders stopped.
    [stopped] = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "recovery.sending_stopped"))
    assert stopped.transaction_id == transaction.id
    assert "opted out of email" in stopped.details["summary"]

    # At its expiry the attempt ends as one whose messages are done.
    expires_at = attempt_of(db, attempt_id).expires_at
    assert send(db, attempt_id, expires_at).outcome == "ended"

    attempt = attempt_of(db, attempt_id)
    assert attempt.status == A.EXHAUSTED and attempt.next_send_at is None
    assert db.session.get(Transaction, transaction.id).status == TransactionStatus.UNRECOVERED
    assert len(smtp_server.received) == 1


def test_unsubscribing_from_email_does_not_switch_the_customer_to_texts(
    client, db, org, make_transaction, smtp_server, fake_twilio
):
    # The email's link says "Stop these reminders".
    transaction = make_transaction(org, customer_email="ann@example.com", customer_phone=PHONE)
    attempt = start(db, transaction, START, channels=["email"], allow_fallback=True)
    send(db, attempt.id, START)
    assert [m.channel for m in messages(db, attempt.id)] == ["email"]

    opt_out(client, db, attempt, "email")
    result = send(db, attempt.id, START + timedelta(days=1))

    assert result.outcome == "no_channel"
    assert [m.channel for m in messages(db, attempt.id)] == ["email"]
    assert len(smtp_server.received) == 1 and fake_twilio.messages() == []
    assert attempt_of(db, attempt.id).is_active


def test_replying_stop_to_a_text_falls_back_to_email(
    client, db, org, make_transaction, smtp_server, fake_twilio
):
    # Issue 5: Twilio's 21610 (the number replied STOP) falls back to email.
    transaction = make_transaction(org, customer_email="ann@example.com", customer_phone=PHONE)
    attempt = start(db, transaction, START, channels=["sms"], allow_fallback=True)
    send(db, attempt.id, START)

    opt_out(client, db, attempt, "sms")
    result = send(db, attempt.id, START + timedelta(days=1))

    assert result.outcome == "sent"
    assert [m.channel for m in messages(db, attempt.id)] == ["sms", "email"]
    assert len(fake_twilio.messages()) == 1 and len(smtp_server.received) == 1


# --- a backlog does not bunch the overdue steps --------------------------------------------------


def test_after_a_backlog_the_overdue_steps_are_spread_out(db, org, make_transaction, smtp_server):
    transaction = make_transaction(org, customer_email="ann@example.com", customer_phone=None)
    attempt_id = start(db, transaction, START).id
    late = START + timedelta(days=3, hours=12)  # the workers were down: steps 0, 1 and 2 are due

    send_all_due(db, late)

    assert [m.step for m in messages(db, attempt_id)] == [0]
    assert len(smtp_server.received) == 1
    attempt = attempt_of(db, attempt_id)
    # Half the planned day between steps 0 and 1, not the seconds a backlog would leave.
    assert attempt.step == 1 and attempt.next_send_at == late + timedelta(hours=12)

    # The rest of the schedule catches up at most a day apart, and all of it fits before expiry.
    while (due := attempt_of(db, attempt_id).next_send_at) is not None and due < attempt.expires_at:
        send_all_due(db, due)
    sent_at = [m.sent_at for m in messages(db, attempt_id)]
    assert sent_at == [late, START + timedelta(days=4), START + timedelta(days=5), START + timedelta(days=6)]


def test_a_step_that_would_come_after_the_expiry_does_not_happen(db, org, make_transaction, smtp_server):
    transaction = make_transaction(org, customer_email="ann@example.com", customer_phone=None)
    attempt_id = start(db, transaction, START).id
    late = START + timedelta(days=6, hours=12)  # every step is due; the link expires at day 7

    send_all_due(db, late)

    assert [m.step for m in messages(db, attempt_id)] == [0]
    attempt = attempt_of(db, attempt_id)
    assert attempt.next_send_at == attempt.expires_at == START + timedelta(days=7)
    send_all_due(db, attempt.expires_at)
    assert attempt_of(db, attempt_id).status == A.EXHAUSTED
    assert len(smtp_server.received) == 1


# --- a payment settling at Stripe holds the reminders -----------------------------------------------


def settling_session(db: Any, attempt: RecoveryAttempt) -> CheckoutSession:
    """A Checkout Session the customer completed with a debit that settles in days (SEPA, ACH)."""
    transaction = attempt.transaction
    record = CheckoutSession(
        organization_id=attempt.organization_id,
        transaction_id=transaction.id,
        attempt_id=attempt.id,
        idempotency_key=f"attempt:{attempt.id}:checkout:0",
        request_fingerprint="x",
        stripe_session_id=f"cs_test_settling_{attempt.id}",
        status=CheckoutStatus.COMPLETE,
        payment_status="unpaid",
        amount=transaction.amount,
        currency=transaction.currency,
        expires_at=START + timedelta(days=1),
        completed_at=START + timedelta(hours=2),
    )
    db.session.add(record)
    db.session.commit()
    return record


def test_a_payment_settling_at_stripe_holds_the_reminders(db, org, make_transaction, smtp_server):
    transaction = make_transaction(org, customer_email="ann@example.com", customer_phone=None)
    attempt = start(db, transaction, START)
    attempt_id = attempt.id
    send(db, attempt_id, START)
    record = settling_session(db, attempt_of(db, attempt_id))
    day_one = START + timedelta(days=1)

    result = send(db, attempt_id, day_one)

    assert result.outcome == "payment_pending"
    assert [m.step for m in messages(db, attempt_id)] == [0]
    assert len(smtp_server.received) == 1
    attempt = attempt_of(db, attempt_id)
    assert attempt.is_active and attempt.step == 1
    assert attempt.next_send_at == day_one + claims.PAYMENT_PENDING_RECHECK
    assert db.session.get(Transaction, transaction.id).status == TransactionStatus.RECOVERING

    # The debit fails: the customer may pay again, and is reminded at the next check.
    db.session.add(
        WebhookEvent(
            stripe_event_id="evt_async_failed",
            type="checkout.session.async_payment_failed",
            object_id=record.stripe_session_id,
            payload={},
        )
    )
    db.session.commit()
    assert send(db, attempt_id, attempt.next_send_at).outcome == "sent"
    assert [m.step for m in messages(db, attempt_id)] == [0, 1]
    assert len(smtp_server.received) == 2
