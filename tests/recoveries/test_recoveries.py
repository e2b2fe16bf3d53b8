"""The recovery engine: start, schedule on RQ, send through real SMTP and a fake Twilio, stop.

Time is controlled by moving an attempt's timestamps into the past ("travel"),
never by sleeping; every send goes through a real RQ worker in burst mode.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from recovery.audit import Actor
from recovery.messaging import contacts
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    ContactSuppression,
    Message,
    MessageStatus,
    Organization,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.queue import RECOVERY_SWEEP, get_queue, periodic, redis_connection, start_periodic
from recovery.recoveries import claims, handoff, jobs, lifecycle, refusals, scheduling
from tests.fixtures.fakes import _twilio_server, fake_twilio, providers_config, smtp_server

__all__ = ["_twilio_server", "fake_twilio", "smtp_server"]

A = AttemptStatus
M = MessageStatus


@pytest.fixture
def app_config(smtp_server: Any, fake_twilio: Any) -> dict[str, Any]:
    return providers_config(smtp_server, fake_twilio)


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    return make_org(name="Acme Shop", reply_to_email="billing@acme.example")


def start(db: Any, transaction: Transaction, **options: Any) -> RecoveryAttempt:
    """Start a recovery as the dashboard does: the service, then the commit that places the first send."""
    options.setdefault("now", utcnow())
    started = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id, "test"), **options
    )
    db.session.commit()
    return started.attempt


def travel(db: Any, attempt: RecoveryAttempt, delta: timedelta) -> None:
    """Let `delta` pass for the attempt: its times move into the past."""
    db.session.refresh(attempt)
    attempt.created_at -= delta
    attempt.expires_at -= delta
    if attempt.next_send_at is not None:
        attempt.next_send_at -= delta
    db.session.commit()


def messages(db: Any, attempt: RecoveryAttempt) -> list[Message]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(Message).where(Message.attempt_id == attempt.id).order_by(Message.step, Message.id)
        )
    )


def reload(db: Any, obj: Any) -> Any:
    db.session.expire_all()
    return db.session.get(type(obj), obj.id)


# --- starting -------------------------------------------------------------------------


def test_start_uses_reachable_channels_a_strong_token_and_the_default_schedule(db, org, make_transaction):
    now = utcnow()
    email_only = make_transaction(org, customer_email="ann@example.com", customer_phone=None)
    both = make_transaction(org, customer_email="bob@example.com", customer_phone="+14155550123")

    first = start(db, email_only, now=now)
    second = start(db, both, now=now)

    assert first.channel == "email" and second.channel == "both"
    assert first.channels == ("email",) and second.channels == ("email", "sms")
    # token_urlsafe(32): 256 random bits, 43 characters.
    assert len(first.token) >= 43 and first.token != second.token
    assert first.status == A.SCHEDULED
    assert first.schedule == "0,1,3,6" and first.max_retries == 3 and first.step == 0
    assert first.next_send_at == now
    assert first.expires_at == now + timedelta(days=7)
    assert reload(db, email_only).status == TransactionStatus.RECOVERING
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "recovery.started"))
    assert event.target_id == str(first.id) and event.details["channels"] == ["email"]


def test_start_follows_the_organizations_settings(db, make_org, make_transaction):
    org = make_org(recovery_schedule="0,2", attempt_lifetime_days=3)
    now = utcnow()

    attempt = start(db, make_transaction(org), now=now)

    assert attempt.schedule == "0,2" and attempt.max_retries == 1
    assert attempt.expires_at == now + timedelta(days=3)


def test_one_active_attempt_per_transaction(db, org, make_transaction):
    transaction = make_transaction(org)
    attempt = start(db, transaction)

    with pytest.raises(refusals.AlreadyActive) as refused:
        start(db, transaction)
    assert refused.value.status == 409 and refused.value.attempt_id == attempt.id
    db.session.rollback()

    # The database refuses it too, for two requests racing past the check.
    db.session.add(
        RecoveryAttempt(
            organization_id=org.id,
            transaction_id=transaction.id,
            channel="email",
            token="another-token",
            status=A.SCHEDULED,
            expires_at=utcnow(),
        )
    )
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()

    lifecycle.cancel_recovery(db.session, reload(db, attempt), Actor.system(org.id), now=utcnow())
    db.session.commit()
    again = start(db, reload(db, transaction))
    assert again.id != attempt.id and again.is_active


@pytest.mark.parametrize(
    ("transaction_values", "options", "status", "message"),
    [
        ({"status": "recovered"}, {}, 409, "already paid"),
        ({"customer_email": None, "customer_phone": None}, {}, 422, "no email address or phone number"),
        ({"customer_phone": None}, {"channels": ["sms"]}, 422, "no phone number"),
        ({}, {"channels": ["fax"]}, 422, "Unknown channel"),
        ({}, {"channels": []}, 422, "at least one channel"),
        ({}, {"schedule": "0,3,1"}, 422, "must increase"),
        ({}, {"schedule": "0,1,x"}, 422, "whole numbers"),
        ({}, {"schedule": [0, 7]}, 422, "before the link expires"),
        ({}, {"schedule": ""}, 422, "at least one day"),
        ({"failure_code": "fraudulent"}, {}, 422, "excluded from recovery"),
        # Stripe charges KWD only in tens of fils: every link sent would be refused there.
        ({"amount": 5124, "currency": "kwd"}, {}, 422, "KWD only in steps of 0.010"),
    ],
)
def test_start_refusals(db, make_org, make_transaction, transaction_values, options, status, message):
    org = make_org(excluded_failure_codes="fraudulent, do_not_honor")
    transaction = make_transaction(org, **transaction_values)

    with pytest.raises(refusals.RecoveryRefused) as refused:
        start(db, transaction, **options)

    assert refused.value.status == status
    assert message in refused.value.message
    db.session.rollback()
    assert db.session.query(RecoveryAttempt).count() == 0


def test_opted_out_number_is_not_a_channel(db, org, make_transaction):
    transaction = make_transaction(org, customer_phone="+14155550123")
    contacts.suppress(db.session, org.id, "sms", "+14155550123", "opted_out")
    db.session.commit()

    assert contacts.available_channels(db.session, transaction) == ["email"]
    with pytest.raises(refusals.RecoveryRefused, match="opted out"):
        start(db, transaction, channels=["sms"])


# --- the schedule, end to end -----------------------------------------------------------------


def test_default_schedule_end_to_end(db, org, make_transaction, smtp_server, rq_worker):
    transaction = make_transaction(org, customer_email="ann@example.com", customer_phone=None)
    attempt = start(db, transaction)

    rq_worker()

    [first] = smtp_server.to("ann@example.com")
    assert first["Subject"] == "Acme Shop: your payment of $50.00 did not go through"
    assert f"http://localhost/pay/{attempt.token}" in first.get_body(preferencelist=("plain",)).get_content()
    attempt = reload(db, attempt)
    assert (attempt.status, attempt.step, attempt.messages_sent) == (A.NOTIFIED, 1, 1)
    assert attempt.next_send_at == attempt.created_at + timedelta(days=1)
    [sent] = messages(db, attempt)
    assert (sent.step, sent.channel, sent.status, sent.provider) == (0, "email", M.SENT, "smtp")
    assert sent.provider_id == first["Message-ID"]

    # Nothing else is due yet, however often the sweeper and worker run.
    jobs.sweep_once(utcnow())
    rq_worker()
    assert len(smtp_server.to("ann@example.com")) == 1

    for gap, step in ((1, 1), (2, 2), (3, 3)):  # days 1, 3 and 6
        travel(db, attempt, timedelta(days=gap))
        assert jobs.sweep_once(utcnow()) == 1
        rq_worker()
        emails = smtp_server.to("ann@example.com")
        assert len(emails) == step + 1
        assert emails[-1]["Subject"] == "Reminder: your $50.00 payment to Acme Shop is still open"
        attempt = reload(db, attempt)
        assert attempt.messages_sent == step + 1

    assert attempt.step == 4 and attempt.next_send_at == attempt.expires_at
    assert [m.step for m in messages(db, attempt)] == [0, 1, 2, 3]

    travel(db, attempt, timedelta(days=1, minutes=1))  # day 7: the link expires
    jobs.sweep_once(utcnow())
    rq_worker()

    attempt = reload(db, attempt)
    assert attempt.status == A.EXHAUSTED and attempt.next_send_at is None
    assert reload(db, transaction).status == TransactionStatus.UNRECOVERED
    assert len(smtp_server.to("ann@example.com")) == 4


def test_a_send_scheduled_for_later_waits_for_the_scheduler(
    db, org, make_transaction, smtp_server, rq_worker, app
):
    transaction = make_transaction(org, customer_phone=None)
    attempt = start(db, transaction, schedule="1,3")  # first message after a day

    registry = ScheduledJobRegistry("default", connection=redis_connection(app))
    assert registry.get_job_ids() == [scheduling.send_job_id(attempt.id, 0, attempt.next_send_at)]
    rq_worker(with_scheduler=True)
    assert smtp_server.received == []

    travel(db, attempt, timedelta(days=1))
    jobs.sweep_once(utcnow())
    rq_worker(with_scheduler=True)
    assert len(smtp_server.received) == 1


def test_sweeper_reenqueues_sends_lost_with_redis(db, org, make_transaction, smtp_server, rq_worker, app):
    attempt = start(db, make_transaction(org, customer_phone=None))
    redis_connection(app).flushdb()  # the job is gone; the database still says it is due

    assert start_periodic(RECOVERY_SWEEP, utcnow()) is True
    assert start_periodic(RECOVERY_SWEEP, utcnow()) is False  # one sweep a minute, however many workers start
    rq_worker(with_scheduler=True)

    assert len(smtp_server.received) == 1
    assert reload(db, attempt).step == 1
    # The sweep put its next run on the schedule for the next minute.
    scheduled = ScheduledJobRegistry("default", connection=redis_connection(app)).get_job_ids()
    sweep = periodic(RECOVERY_SWEEP)
    assert sweep.job_id(sweep.next_slot(utcnow())) in scheduled


def test_due_and_later_sends_are_placed_together_once(db, org, make_transaction, app):
    first = start(db, make_transaction(org, customer_phone=None))
    second = start(db, make_transaction(org, customer_phone=None))
    redis_connection(app).flushdb()
    now = utcnow()
    later, due = (second.id, 1, now + timedelta(days=1)), (first.id, 0, now - timedelta(seconds=1))

    # A later send, then a due one, in one pipeline (RQ's enqueue wants MULTI first).
    assert scheduling.schedule_many([later, due], now) == 2
    assert scheduling.schedule_many([later, due], now) == 0  # both wait already

    assert get_queue().job_ids == [scheduling.send_job_id(*due)]
    scheduled = ScheduledJobRegistry("default", connection=redis_connection(app)).get_job_ids()
    assert scheduled == [scheduling.send_job_id(*later)]


def test_a_half_written_job_record_does_not_stop_placement(db, org, make_transaction, app):
    attempt = start(db, make_transaction(org, customer_phone=None))
    redis = redis_connection(app)
    redis.flushdb()
    due = (attempt.id, 0, utcnow() - timedelta(seconds=1))
    # What a worker leaves when its job's record was removed as it started and it then died.
    redis.hset(Job.key_for(scheduling.send_job_id(*due)), mapping={"status": "finished", "ended_at": "x"})

    assert scheduling.schedule_many([due]) == 1
    assert get_queue().job_ids == [scheduling.send_job_id(*due)]
    assert Job.fetch(scheduling.send_job_id(*due), connection=redis).func_name.endswith("send_step")


def test_due_scan_uses_only_active_attempts(db, org, make_transaction):
    now = utcnow()
    due = start(db, make_transaction(org), now=now - timedelta(minutes=5))
    later = start(db, make_transaction(org), now=now, schedule="1,2")
    cancelled = start(db, make_transaction(org), now=now - timedelta(minutes=5))
    lifecycle.cancel_recovery(db.session, cancelled, Actor.system(org.id), now=now)
    db.session.commit()

    assert [row[0] for row in claims.due_attempts(db.session, now)] == [due.id]
    assert later.id not in [row[0] for row in claims.due_attempts(db.session, now + timedelta(hours=1))]


# --- stopping --------------------------------------------------------------------------------


def test_cancel_stops_a_send_already_in_the_queue(db, org, make_transaction, smtp_server, rq_worker, app):
    transaction = make_transaction(org, customer_phone=None)
    attempt = start(db, transaction)
    assert get_queue().count == 1  # the first send is waiting
    due = attempt.next_send_at

    cancelled = lifecycle.cancel_recovery(db.session, attempt, Actor.system(org.id), now=utcnow())
    db.session.commit()  # which takes the waiting send off the queue
    assert scheduling.send_job_id(attempt.id, 0, due) not in get_queue().job_ids
    # One that got past that (a worker had fetched it, a sweep placed it again) must refuse on its own.
    scheduling.schedule_send(attempt.id, 0, due)
    rq_worker()

    assert smtp_server.received == []
    assert messages(db, attempt) == []
    assert reload(db, attempt).status == A.CANCELLED
    # Only the recovery is cancelled: the transaction is open again (see Transaction).
    assert reload(db, transaction).status == TransactionStatus.FAILED
    assert cancelled.pending_job_id == scheduling.send_job_id(attempt.id, 0, attempt.created_at)


def test_cancel_removes_the_waiting_job(db, org, make_transaction, app):
    attempt = start(db, make_transaction(org), schedule="1,2")
    registry = ScheduledJobRegistry("default", connection=redis_connection(app))
    assert len(registry.get_job_ids()) == 1

    cancelled = lifecycle.cancel_recovery(db.session, attempt, Actor.system(org.id), now=utcnow())
    db.session.commit()  # which removes the waiting job

    assert registry.get_job_ids() == []
    assert scheduling.unschedule(cancelled.pending_job_id) is False  # nothing left to remove
    with pytest.raises(refusals.RecoveryRefused, match="already cancelled"):
        lifecycle.cancel_recovery(db.session, attempt, Actor.system(org.id), now=utcnow())


def test_a_paid_transaction_gets_no_more_messages(db, org, make_transaction, smtp_server, rq_worker):
    transaction = make_transaction(org, customer_phone=None)
    attempt = start(db, transaction)
    rq_worker()
    assert len(smtp_server.received) == 1

    transaction = reload(db, transaction)
    transaction.transition(TransactionStatus.RECOVERED)  # as the webhook does
    db.session.commit()
    travel(db, attempt, timedelta(days=1))
    jobs.sweep_once(utcnow())
    rq_worker()

    assert len(smtp_server.received) == 1
    attempt = reload(db, attempt)
    assert attempt.status == A.COMPLETED and attempt.next_send_at is None


def test_a_job_that_runs_twice_sends_once(db, org, make_transaction, smtp_server, fake_twilio, rq_worker):
    transaction = make_transaction(org, customer_phone="+14155550123")
    attempt = start(db, transaction)
    # The same send, enqueued again under other ids (a retry, a duplicate delivery).
    get_queue().enqueue(jobs.send_step, attempt.id, 0)
    get_queue().enqueue(jobs.send_step, attempt.id, 0)

    rq_worker()

    assert len(smtp_server.received) == 1
    assert len(fake_twilio.messages()) == 1
    assert [(m.step, m.channel) for m in messages(db, attempt)] == [(0, "email"), (0, "sms")]
    assert reload(db, attempt).step == 1


def _dead_claim(db, org, transaction, attempt, *, handed_off: bool) -> None:
    """A worker claimed the email (and began its hand-off or not) and was killed before the answer."""
    db.session.add(
        Message(
            organization_id=org.id,
            attempt_id=attempt.id,
            transaction_id=transaction.id,
            step=0,
            channel="email",
            recipient=transaction.customer_email,
            status=M.SENDING,
            tries=1,
            handed_off_at=utcnow() if handed_off else None,
        )
    )
    db.session.commit()


def _age_messages(db, by: timedelta) -> None:
    """Stand-in for the wait: every message's claim and hand-off moved `by` into the past."""
    db.session.expire_all()
    for message in db.session.scalars(select(Message)):
        message.updated_at -= by
        if message.handed_off_at is not None:
            message.handed_off_at -= by
    db.session.commit()


def test_a_claim_a_dead_worker_never_handed_off_is_sent_again(
    db, org, make_transaction, smtp_server, rq_worker
):
    transaction = make_transaction(org, customer_phone=None)
    attempt = start(db, transaction)
    _dead_claim(db, org, transaction, attempt, handed_off=False)

    rq_worker()
    assert smtp_server.received == []
    assert reload(db, attempt).step == 0  # a live worker may still hold it

    # Past CLAIM_ABANDONED (two minutes), not the fifteen it used to take: the provider never
    # saw it, so the sweeper fails the claim and makes the step due again; the email goes out once.
    _age_messages(db, handoff.CLAIM_ABANDONED + timedelta(seconds=5))
    assert jobs.sweep_once(utcnow()) == 1
    rq_worker()

    assert [m["To"] for m in smtp_server.received] == [transaction.customer_email]
    [message] = messages(db, attempt)
    assert (message.status, message.tries) == (M.SENT, 2)
    assert message.provider_id and message.handed_off_at is not None
    assert reload(db, attempt).step == 1
    jobs.sweep_once(utcnow())
    rq_worker()
    assert len(smtp_server.received) == 1


def test_a_hand_off_a_dead_worker_never_answered_is_unknown_not_sent(
    db, org, make_transaction, smtp_server, rq_worker
):
    transaction = make_transaction(org, customer_phone=None)
    attempt = start(db, transaction)
    _dead_claim(db, org, transaction, attempt, handed_off=True)

    _age_messages(db, handoff.CLAIM_ABANDONED + timedelta(seconds=5))
    jobs.sweep_once(utcnow())
    rq_worker()
    assert smtp_server.received == []
    assert [m.status for m in messages(db, attempt)] == [M.SENDING]  # the provider call may still be running

    _age_messages(db, handoff.HANDOFF_ABANDONED)
    assert jobs.sweep_once(utcnow()) == 1  # the step is due again, to move on
    rq_worker()

    assert smtp_server.received == []  # never sent twice on a guess
    [message] = messages(db, attempt)
    assert message.status == M.UNKNOWN  # never "sent"
    assert "Unknown — check the provider" in (message.error or "")
    assert f"recovery-message-{message.id}@" in (message.error or "")  # what to look for in the mail log
    assert message.provider_id is None and message.sent_at is None
    moved = reload(db, attempt)
    assert (moved.step, moved.messages_sent, moved.status) == (1, 0, "scheduled")


# --- provider failures --------------------------------------------------------------------------


def test_bounced_email_falls_back_to_sms(db, org, make_transaction, smtp_server, fake_twilio, rq_worker):
    transaction = make_transaction(org, customer_email="gone@example.com", customer_phone="+14155550123")
    smtp_server.refuse("gone@example.com", "550 5.1.1 No such user")
    attempt = start(db, transaction, channels=["email"])

    rq_worker()

    email, sms = messages(db, attempt)
    assert (email.channel, email.status) == ("email", M.UNDELIVERABLE)
    assert "550" in (email.error or "")
    assert (sms.step, sms.channel, sms.status, sms.provider) == (0, "sms", M.SENT, "twilio")
    [sent] = fake_twilio.messages()
    assert sent["To"] == "+14155550123" and f"/pay/{attempt.token}" in sent["Body"]
    suppression = db.session.scalar(select(ContactSuppression))
    assert (suppression.channel, suppression.address, suppression.reason) == (
        "email",
        "gone@example.com",
        "undeliverable",
    )
    assert reload(db, attempt).status == A.NOTIFIED

    # Later steps go by SMS only.
    travel(db, attempt, timedelta(days=1))
    jobs.sweep_once(utcnow())
    rq_worker()
    assert [(m.step, m.channel) for m in messages(db, attempt)][2:] == [(1, "sms")]
    assert smtp_server.received == []


def test_invalid_number_falls_back_to_email(db, org, make_transaction, smtp_server, fake_twilio, rq_worker):
    transaction = make_transaction(org, customer_email="ann@example.com", customer_phone="+14155550000")
    fake_twilio.fail_next(400, 21211, "The 'To' number is not a valid phone number.")
    attempt = start(db, transaction, channels=["sms"])

    rq_worker()

    sms, email = messages(db, attempt)
    assert (sms.channel, sms.status) == ("sms", M.UNDELIVERABLE)
    assert (email.channel, email.status) == ("email", M.SENT)
    assert len(smtp_server.to("ann@example.com")) == 1


def test_no_channel_left_fails_the_attempt(db, org, make_transaction, smtp_server, rq_worker):
    transaction = make_transaction(org, customer_email="gone@example.com", customer_phone=None)
    smtp_server.refuse("gone@example.com", "550 5.1.1 No such user")
    attempt = start(db, transaction)

    rq_worker()

    assert reload(db, attempt).status == A.FAILED
    assert reload(db, transaction).status == TransactionStatus.UNRECOVERED


def test_transient_smtp_failure_is_retried_with_backoff(db, org, make_transaction, smtp_server, rq_worker):
    transaction = make_transaction(org, customer_email="busy@example.com", customer_phone=None)
    smtp_server.refuse("busy@example.com", "451 4.3.0 Try again later", times=1)
    attempt = start(db, transaction)

    rq_worker()

    [message] = messages(db, attempt)
    assert (message.status, message.tries) == (M.FAILED, 1)
    assert "451" in (message.error or "")
    attempt = reload(db, attempt)
    assert attempt.step == 0
    assert timedelta(seconds=30) < attempt.next_send_at - utcnow() <= timedelta(minutes=1)
    assert smtp_server.received == []

    travel(db, attempt, timedelta(minutes=2))
    jobs.sweep_once(utcnow())
    rq_worker()

    [message] = messages(db, attempt)
    assert (message.status, message.tries, message.error) == (M.SENT, 2, None)
    assert len(smtp_server.received) == 1
    assert reload(db, attempt).step == 1


@pytest.mark.parametrize(("status", "code"), [(500, 20500), (429, 20429)])
def test_transient_twilio_failure_is_retried(db, org, make_transaction, fake_twilio, rq_worker, status, code):
    transaction = make_transaction(org, customer_email=None, customer_phone="+14155550123")
    fake_twilio.fail_next(status, code, "busy")
    attempt = start(db, transaction)

    rq_worker()
    [message] = messages(db, attempt)
    assert message.status == M.FAILED and reload(db, attempt).step == 0

    travel(db, attempt, timedelta(minutes=2))
    jobs.sweep_once(utcnow())
    rq_worker()

    [message] = messages(db, attempt)
    assert message.status == M.SENT and message.tries == 2
    assert len(fake_twilio.messages()) == 2  # one refused, one accepted


# --- the development outbox ----------------------------------------------------------------------


@pytest.mark.parametrize("app_config", [{}])
def test_without_providers_messages_go_to_the_outbox(db, org, make_transaction, rq_worker):
    transaction = make_transaction(org, customer_phone="+14155550123")
    attempt = start(db, transaction)

    rq_worker()

    email, sms = messages(db, attempt)
    assert (email.provider, email.status, sms.provider, sms.status) == ("outbox", M.SENT, "outbox", M.SENT)
    assert email.subject == "Acme Shop: your payment of $50.00 did not go through"
    assert f"http://localhost/pay/{attempt.token}" in email.body_html
    assert f"http://localhost/pay/{attempt.token}" in sms.body_text
