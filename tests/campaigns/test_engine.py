"""A campaign run by the engine: messages, a card retry queued once, a staff alert, the end held for review.

Real SMTP and a fake Twilio on loopback, a real Redis and a forking RQ worker in
burst mode; time moves by shifting the attempt's timestamps into the past.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from rq.job import Job
from sqlalchemy import select

from recovery.audit import Actor
from recovery.campaigns import engine, services
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    Campaign,
    Message,
    Organization,
    RecoveryAttempt,
    Role,
    StaffEmail,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.queue import get_queue, redis_connection
from recovery.recoveries import jobs, lifecycle
from recovery.review.services import HELD
from recovery.rules.decision import Decision

A = AttemptStatus


def step(action: str, hours: int = 0, after: str = "previous") -> dict[str, Any]:
    return {"action": action, "delay_hours": hours, "after": after}


FULL = [step("email"), step("retry_card", 24), step("notify_staff"), step("sms", 1)]


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    return make_org(name="Acme Shop", reply_to_email="billing@acme.example")


def campaign(db: Any, org: Organization, steps: list[dict[str, Any]], **more: Any) -> Campaign:
    made = services.create(
        db.session,
        org,
        Actor.system(org.id),
        {"name": "Full", "steps": steps, "link_lifetime_days": 3, **more},
    )
    db.session.commit()
    return made


DECISION = Decision(
    action="start_campaign",
    rule_id=None,
    rule_name="Big ones",
    rule_version=4,
    campaign_id=None,
    reason=None,
    sentence='Rule "Big ones" matched: the amount is at least $40.00.',
)


def start(db: Any, transaction: Transaction, made: Campaign, **options: Any) -> RecoveryAttempt:
    started = lifecycle.start_recovery(
        db.session,
        transaction,
        Actor.system(transaction.organization_id, "test"),
        now=options.pop("now", utcnow()),
        campaign_version=services.current_version(db.session, made),
        **options,
    )
    db.session.commit()
    return started.attempt


def travel(db: Any, attempt_id: int, delta: timedelta) -> RecoveryAttempt:
    """Let `delta` pass for the attempt, then place whatever is due (the sweeper's job)."""
    attempt = get(db, attempt_id)
    attempt.created_at -= delta
    attempt.expires_at -= delta
    if attempt.next_send_at is not None:
        attempt.next_send_at -= delta
    db.session.commit()
    jobs.sweep_once(utcnow())
    return attempt


def get(db: Any, attempt_id: int) -> RecoveryAttempt:
    db.session.expire_all()
    attempt = db.session.get(RecoveryAttempt, attempt_id)
    assert attempt is not None
    return attempt


def events(db: Any, action: str) -> list[AuditEvent]:
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def card_retry_jobs(app: Any) -> list[Job]:
    redis = redis_connection(app)
    found = [
        Job.fetch(key.decode().removeprefix("rq:job:"), connection=redis) for key in redis.keys("rq:job:*")
    ]
    return [job for job in found if job.func_name == engine.RETRY_CARD_JOB]


def test_the_start_fixes_the_plan_and_records_campaign_and_rule(db, org, make_transaction):
    made = campaign(
        db, org, [step("retry_card", 24, "failure"), step("email", 1), step("sms", 30, "failure")]
    )
    now = utcnow()
    # Failed 26 hours ago: the first retry (24 h after the failure) is due at once.
    transaction = make_transaction(org, customer_phone="+14155550123", failed_at=now - timedelta(hours=26))
    attempt = start(db, transaction, made, now=now, decision=DECISION)

    assert [(p["action"], p["offset_minutes"]) for p in attempt.plan or []] == [
        ("retry_card", 0),
        ("email", 60),
        ("sms", 240),
    ]
    assert attempt.next_send_at == now  # a card retry: no quiet hours to wait for
    assert attempt.expires_at == now + timedelta(days=3)
    assert attempt.campaign_version_id == services.current_version(db.session, made).id
    assert (attempt.rule_name, attempt.rule_version, attempt.decision) == ("Big ones", 4, DECISION.sentence)
    assert attempt.step_count == 3 and attempt.step_action == "retry_card"
    [started] = events(db, "recovery.started")
    assert started.details["campaign"] == "Full" and started.details["campaign_version"] == 1
    assert started.details["summary"].startswith(DECISION.sentence)
    assert "retry_card at once, email after 1 h, sms after 4 h" in started.details["summary"]


def test_a_schedule_and_a_campaign_together_are_refused(db, org, make_transaction):
    made = campaign(db, org, [step("email")])
    with pytest.raises(lifecycle.RecoveryRefused) as refused:
        start(db, make_transaction(org), made, schedule="0,1")
    assert refused.value.field == "schedule"


def test_an_edit_never_changes_a_running_attempts_plan(db, org, make_transaction):
    made = campaign(db, org, [step("email"), step("email", 24)])
    attempt = start(db, make_transaction(org), made)
    services.update(db.session, made, Actor.system(org.id), {"steps": [step("sms")]}, expected_version=1)
    db.session.commit()

    attempt = get(db, attempt.id)
    assert [p["action"] for p in attempt.plan or []] == ["email", "email"]
    assert services.version_of(db.session, made, 1).id == attempt.campaign_version_id  # type: ignore[union-attr]
    later = start(db, make_transaction(org), made)
    assert [p["action"] for p in later.plan or []] == ["sms"]
    assert later.campaign_version_id == services.current_version(db.session, made).id


def test_a_campaign_runs_its_steps_in_order_and_ends_held_for_review(
    db, app, org, make_user, make_transaction, smtp_server, fake_twilio, work
):
    owner = make_user(org, role=Role.OWNER, email="owner@acme.example")
    make_user(org, role=Role.ADMIN, email="admin@acme.example")
    make_user(org, role=Role.VIEWER, email="viewer@acme.example")
    made = campaign(db, org, FULL, end="hold_for_review")
    transaction = make_transaction(
        org, customer_email="ann@example.com", customer_phone="+14155550123", customer_name="Ann"
    )
    attempt_id = start(db, transaction, made).id

    work()  # step 1: the email, and only the email
    assert len(smtp_server.to("ann@example.com")) == 1
    assert fake_twilio.requests == []
    attempt = get(db, attempt_id)
    assert (attempt.step, attempt.status) == (1, A.NOTIFIED)
    # "24 hours after the previous step": after the email went, seconds after the start.
    planned = attempt.created_at + timedelta(hours=24)
    assert planned <= attempt.next_send_at < planned + timedelta(minutes=1)  # type: ignore[operator]

    travel(db, attempt_id, timedelta(hours=24))
    work()  # step 2: the card retry is queued; step 3 (due at once after it): staff are told
    [retry] = card_retry_jobs(app)
    assert retry.args == (attempt_id, 1)
    assert retry.id == engine.retry_job_id(attempt_id, 1)
    assert not engine.queue_card_retry(attempt_id, 1)  # asked again (a send job run twice): still one
    assert len(card_retry_jobs(app)) == 1
    alerts = smtp_server.to("owner@acme.example") + smtp_server.to("admin@acme.example")
    assert len(alerts) == 2 and smtp_server.to("viewer@acme.example") == []
    body = alerts[0].get_body(preferencelist=("plain",)).get_content()
    assert transaction.transaction_ref in body and "$50.00" in body and "Ann" in body
    assert f"http://localhost/transactions/{transaction.id}" in body
    assert {e.status for e in db.session.scalars(select(StaffEmail))} == {"sent"}
    assert [e.details["summary"] for e in events(db, "recovery.card_retry_queued")] == [
        "Card retry queued (step 2 of 4)."
    ]
    [alerted] = events(db, "recovery.staff_alerted")
    assert "owner@acme.example" in alerted.details["summary"] and owner.email != "admin@acme.example"
    attempt = get(db, attempt_id)
    assert attempt.step == 3 and len(smtp_server.to("ann@example.com")) == 1

    travel(db, attempt_id, timedelta(hours=1))
    work()  # step 4: the text message, and only it
    assert len(fake_twilio.requests) == 1
    assert len(smtp_server.to("ann@example.com")) == 1
    attempt = get(db, attempt_id)
    assert attempt.step == 4 and attempt.next_send_at == attempt.expires_at
    messages = db.session.scalars(select(Message).where(Message.attempt_id == attempt_id)).all()
    assert sorted((m.step, m.channel) for m in messages) == [(0, "email"), (3, "sms")]

    travel(db, attempt_id, timedelta(days=2))  # the link expires
    work()
    attempt = get(db, attempt_id)
    assert attempt.status == A.EXHAUSTED
    transaction = db.session.get(Transaction, transaction.id)
    assert transaction.status == TransactionStatus.UNRECOVERED
    assert transaction.review_status == HELD
    assert 'Campaign "Full" (version 1) ended without payment' in (transaction.review_reason or "")


def test_the_alert_goes_to_the_configured_address(db, org, make_user, make_transaction, smtp_server, work):
    make_user(org, role=Role.OWNER, email="owner@acme.example")
    org.staff_alert_email = "alerts@acme.example"
    made = campaign(db, org, [step("notify_staff")])
    start(db, make_transaction(org, customer_email=None, customer_phone="+14155550123"), made)
    work()
    assert len(smtp_server.to("alerts@acme.example")) == 1
    assert smtp_server.to("owner@acme.example") == []


def test_an_sms_step_without_a_phone_falls_back_or_is_passed(
    db, make_org, make_transaction, smtp_server, work
):
    org = make_org(fallback_channels="")
    made = campaign(db, org, [step("sms"), step("email", 1)])
    attempt_id = start(
        db, make_transaction(org, customer_email="bo@example.com", customer_phone=None), made
    ).id
    work()
    attempt = get(db, attempt_id)
    # No fallback allowed: the text is passed, not the recovery failed; the email step follows.
    assert attempt.status == A.SCHEDULED and attempt.step == 1
    assert smtp_server.to("bo@example.com") == []
    travel(db, attempt_id, timedelta(hours=1))
    work()
    assert len(smtp_server.to("bo@example.com")) == 1


def test_a_paid_transaction_stops_the_campaign_before_its_retry(db, app, org, make_transaction, work):
    made = campaign(db, org, [step("retry_card"), step("email", 1)])
    transaction = make_transaction(org)
    attempt_id = start(db, transaction, made).id
    transaction.status = TransactionStatus.RECOVERED
    db.session.commit()
    work()
    assert get(db, attempt_id).status == A.COMPLETED
    assert card_retry_jobs(app) == []


def test_skip_to_next_message_passes_the_retries_ahead(db, org, make_transaction, work, smtp_server):
    made = campaign(db, org, [step("retry_card"), step("retry_card", 24), step("email", 1), step("email", 1)])
    attempt = start(db, make_transaction(org, customer_email="cy@example.com", customer_phone=None), made)
    work()  # the first retry is queued; the attempt waits for the second
    attempt = get(db, attempt.id)
    assert attempt.step == 1

    assert engine.skip_to_next_message(db.session, attempt, now=utcnow()) == 2
    db.session.commit()
    assert get_queue().count == 1  # the message's send, placed after the commit
    work()
    [first] = smtp_server.to("cy@example.com")
    # The first message of the campaign, after two card retries: not worded as a reminder.
    assert first["Subject"] == "Acme Shop: your payment of $50.00 did not go through"
    attempt = get(db, attempt.id)
    assert attempt.step == 3
    [skipped] = events(db, "recovery.skipped_to_message")
    assert "step 3" in skipped.details["summary"]
    # Nothing to skip to once the last message step is under way.
    assert engine.skip_to_next_message(db.session, attempt, now=utcnow()) == 3
    attempt.step = 4
    assert engine.skip_to_next_message(db.session, attempt, now=utcnow()) is None


def test_an_archived_or_another_organizations_campaign_is_refused(db, org, make_org, make_transaction):
    made = campaign(db, org, [step("email")])
    theirs = campaign(db, make_org(), [step("email")])
    with pytest.raises(lifecycle.RecoveryRefused) as refused:
        start(db, make_transaction(org), theirs)
    assert (refused.value.status, refused.value.field) == (404, "campaign_id")
    services.archive(db.session, made, Actor.system(org.id), now=utcnow())
    db.session.commit()
    with pytest.raises(lifecycle.RecoveryRefused) as refused:
        start(db, make_transaction(org), made)
    assert refused.value.field == "campaign_id" and "archived" in refused.value.message


def test_a_campaign_without_messages_needs_no_address(
    db, org, make_user, make_transaction, smtp_server, work
):
    make_user(org, role=Role.OWNER, email="owner@acme.example")
    made = campaign(db, org, [step("notify_staff")], end="hold_for_review", link_lifetime_days=1)
    transaction = make_transaction(org, customer_email=None, customer_phone=None)
    attempt_id = start(db, transaction, made).id
    work()
    assert len(smtp_server.to("owner@acme.example")) == 1
    attempt = get(db, attempt_id)
    assert attempt.step == 1 and attempt.messages_sent == 0 and attempt.next_send_at == attempt.expires_at
    travel(db, attempt_id, timedelta(days=1))
    work()
    assert get(db, attempt_id).status == A.EXHAUSTED
    assert db.session.get(Transaction, transaction.id).review_status == HELD
    assert len(smtp_server.received) == 1
