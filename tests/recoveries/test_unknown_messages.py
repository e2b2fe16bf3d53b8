"""Messages whose fate is unknown: never called sent, looked up at Twilio, sent again by staff's choice."""

from __future__ import annotations

import threading
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import AuditEvent, Message, MessageStatus, RecoveryAttempt, Role, utcnow
from recovery.queue import get_queue
from recovery.recoveries import delivery_reports, handoff, jobs, repair
from tests.conftest import csrf_token, login
from tests.fixtures.fakes import _twilio_server, fake_twilio, providers_config, smtp_server
from tests.recoveries.test_recoveries import messages, reload, start

__all__ = ["_twilio_server", "fake_twilio", "smtp_server"]

M = MessageStatus


@pytest.fixture
def app_config(smtp_server: Any, fake_twilio: Any) -> dict[str, Any]:
    # Twilio's answer is awaited one second: the tests make it come too late.
    return {**providers_config(smtp_server, fake_twilio), "TWILIO_TIMEOUT_SECONDS": 1}


def _sms_taken_but_answer_lost(db, org, make_transaction, fake_twilio, rq_worker) -> Any:
    """A text Twilio took whose answer never reached us (read timeout): the message is unknown."""
    answered = threading.Event()
    fake_twilio.before_answer = lambda _sid, _form: answered.wait(5)
    transaction = make_transaction(org, customer_email=None, customer_phone="+14155550123")
    attempt = start(db, transaction)
    rq_worker()
    answered.set()
    return SimpleNamespace(id=attempt.id)  # ids only: the look-up job ends the test's session


def test_a_text_whose_answer_was_lost_is_unknown_then_found_in_twilios_list(
    db, org, make_transaction, fake_twilio, rq_worker
):
    attempt = _sms_taken_but_answer_lost(db, org, make_transaction, fake_twilio, rq_worker)

    [message] = messages(db, attempt)
    assert message.status == M.UNKNOWN and message.provider_id is None  # never "sent" on a guess
    assert "Unknown — check the provider" in (message.error or "")
    assert len(fake_twilio.messages()) == 1  # and never sent twice
    assert db.session.get(RecoveryAttempt, attempt.id).step == 1  # the schedule goes on
    lookup = f"recovery-lookup-{message.id}-{message.tries}"
    assert lookup in get_queue().scheduled_job_registry.get_job_ids()

    message_id = message.id
    assert jobs.look_up_sms(message_id) == "found"

    [found] = messages(db, attempt)
    [created] = fake_twilio.created
    assert (found.status, found.provider, found.provider_id) == (M.SENT, "twilio", created["sid"])
    assert found.error is None and found.sent_at == found.handed_off_at
    assert db.session.get(RecoveryAttempt, attempt.id).messages_sent == 1
    actions = db.session.scalars(select(AuditEvent.action).where(AuditEvent.target_id == str(found.id))).all()
    assert "recovery.message_found" in actions
    assert jobs.look_up_sms(message_id) == "skipped"  # settled: a second run changes nothing


def test_an_unknown_text_twilio_does_not_list_stays_unknown_and_says_so(
    db, org, make_transaction, fake_twilio, rq_worker
):
    attempt = _sms_taken_but_answer_lost(db, org, make_transaction, fake_twilio, rq_worker)
    fake_twilio.created.clear()  # Twilio's list has no such text

    [message] = messages(db, attempt)
    message_id = message.id
    assert jobs.look_up_sms(message_id) == "not_found"

    [still] = messages(db, attempt)
    assert still.status == M.UNKNOWN
    assert "had no such text" in (still.error or "")
    listed = [r for r in fake_twilio.requests if r["method"] == "GET"]
    assert listed and listed[-1]["path"].endswith("/Messages.json")


def test_a_delivery_report_for_an_unknown_text_settles_it(db, org, make_transaction, fake_twilio, rq_worker):
    attempt = _sms_taken_but_answer_lost(db, org, make_transaction, fake_twilio, rq_worker)
    [message] = messages(db, attempt)
    [created] = fake_twilio.created

    applied = delivery_reports.apply_status(
        db.session,
        provider_id=created["sid"],
        status="delivered",
        error_code=None,
        now=utcnow(),
        message_id=message.id,
    )
    db.session.commit()

    assert applied.changed
    [settled] = messages(db, attempt)
    assert (settled.status, settled.provider_id) == (M.DELIVERED, created["sid"])
    assert db.session.get(RecoveryAttempt, attempt.id).messages_sent == 1


def _unknown_email(db, org, make_transaction, rq_worker) -> Any:
    """An email whose worker died during its hand-off, found by the sweeper; the schedule moved on."""
    transaction = make_transaction(org, customer_phone=None)
    attempt = start(db, transaction)
    get_queue().empty()  # the first send's job: this test plays the dead worker itself
    claim = Message(
        organization_id=org.id,
        attempt_id=attempt.id,
        transaction_id=transaction.id,
        step=0,
        channel="email",
        recipient=transaction.customer_email,
        subject="Your payment",
        body_text="Pay here",
        status=M.SENDING,
        tries=1,
        handed_off_at=utcnow() - handoff.HANDOFF_ABANDONED - timedelta(seconds=1),
    )
    db.session.add(claim)
    db.session.commit()
    assert jobs.sweep_once(utcnow()) == 1  # the step, due again to move on
    rq_worker()
    db.session.expire_all()
    assert db.session.get(Message, claim.id).status == M.UNKNOWN
    assert reload(db, attempt).step == 1
    return attempt, claim.id


def test_staff_send_an_unknown_email_again_on_purpose(
    db, client, org, make_transaction, make_user, signed_in, smtp_server, rq_worker
):
    attempt, message_id = _unknown_email(db, org, make_transaction, rq_worker)
    signed_in(Role.OPERATOR, org=org)
    page = client.get(f"/transactions/{attempt.transaction_id}")
    html = page.get_data(as_text=True)
    assert "Email: unknown — check the provider" in html
    assert f"/messages/{message_id}/resend" in html

    answer = client.post(f"/messages/{message_id}/resend", data={"csrf_token": csrf_token(html)})
    assert answer.status_code == 302
    assert reload(db, attempt).messages_sent == 0
    rq_worker()

    [email] = smtp_server.received
    assert email["To"] == attempt.transaction.customer_email
    db.session.expire_all()
    message = db.session.get(Message, message_id)
    assert (message.status, message.tries) == (M.SENT, 2) and message.provider_id
    assert reload(db, attempt).messages_sent == 1
    action = db.session.scalar(
        select(AuditEvent.action).where(AuditEvent.action == "recovery.message_resent")
    )
    assert action == "recovery.message_resent"

    # Sent now: a second resend is refused, and nothing more goes out.
    html = client.get(f"/transactions/{attempt.transaction_id}").get_data(as_text=True)
    assert f"/messages/{message_id}/resend" not in html
    refused = client.post(
        f"/messages/{message_id}/resend", data={"csrf_token": csrf_token(html)}, follow_redirects=True
    )
    assert "can be sent again" in refused.get_data(as_text=True)
    rq_worker()
    assert len(smtp_server.received) == 1


def test_a_resend_is_for_operators_of_the_same_organization(
    db, app, client, org, make_org, make_user, make_transaction, signed_in, smtp_server, rq_worker
):
    attempt, message_id = _unknown_email(db, org, make_transaction, rq_worker)
    signed_in(Role.VIEWER, org=org)
    html = client.get(f"/transactions/{attempt.transaction_id}").get_data(as_text=True)
    assert f"/messages/{message_id}/resend" not in html
    assert (
        client.post(f"/messages/{message_id}/resend", data={"csrf_token": csrf_token(html)}).status_code
        == 403
    )

    other = app.test_client()
    login(other, make_user(make_org(name="Other Shop"), role=Role.OWNER))
    html = other.get("/transactions").get_data(as_text=True)
    assert (
        other.post(f"/messages/{message_id}/resend", data={"csrf_token": csrf_token(html)}).status_code == 404
    )

    rq_worker()
    assert smtp_server.received == []
    db.session.expire_all()
    assert db.session.get(Message, message_id).status == M.UNKNOWN


def test_a_resend_whose_worker_dies_before_the_hand_off_is_unknown_again(
    db, client, org, make_transaction, signed_in, smtp_server, rq_worker
):
    attempt, message_id = _unknown_email(db, org, make_transaction, rq_worker)
    signed_in(Role.OPERATOR, org=org)
    html = client.get(f"/transactions/{attempt.transaction_id}").get_data(as_text=True)
    client.post(f"/messages/{message_id}/resend", data={"csrf_token": csrf_token(html)})
    get_queue().empty()  # the resend job is lost with its worker

    jobs.sweep_once(utcnow() + handoff.CLAIM_ABANDONED + timedelta(seconds=1))

    db.session.expire_all()
    message = db.session.get(Message, message_id)
    assert message.status == M.UNKNOWN and "resend did not happen" in (message.error or "")
    assert smtp_server.received == []


def test_a_resend_whose_answer_is_lost_again_is_looked_up_again(
    db, org, make_transaction, fake_twilio, rq_worker
):
    attempt = _sms_taken_but_answer_lost(db, org, make_transaction, fake_twilio, rq_worker)
    [message] = messages(db, attempt)
    message_id = message.id
    queued = repair.resend(db.session, message, Actor.system(org.id, "test"), utcnow())
    db.session.commit()
    answered = threading.Event()
    fake_twilio.before_answer = lambda _sid, _form: answered.wait(5)

    assert jobs.resend_message(queued.message_id, queued.tries) == "unknown"
    answered.set()

    assert len(fake_twilio.messages()) == 2  # sent again, as the staff member chose
    scheduled = get_queue().scheduled_job_registry.get_job_ids()
    assert f"recovery-lookup-{message_id}-1" in scheduled and f"recovery-lookup-{message_id}-2" in scheduled
