"""Twilio calling us back: signed delivery reports and STOP/START replies, after real sends.

Each SMS is sent through a real RQ worker to the fake Twilio API over HTTP;
the callbacks are signed with twilio's own RequestValidator, as Twilio does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from recovery.audit import Actor
from recovery.messaging import contacts
from recovery.models import (
    AuditEvent,
    ContactSuppression,
    Message,
    MessageStatus,
    RecoveryAttempt,
    SuppressionReason,
    Transaction,
    utcnow,
)
from recovery.recoveries import claims, jobs, lifecycle
from recovery.transactions.timeline import timeline
from tests.fixtures.fakes import TWILIO_TOKEN, _twilio_server, fake_twilio, providers_config, smtp_server

__all__ = ["_twilio_server", "fake_twilio", "smtp_server"]

M = MessageStatus
PHONE = "+14155550123"


@pytest.fixture
def app_config(smtp_server: Any, fake_twilio: Any) -> dict[str, Any]:
    return providers_config(smtp_server, fake_twilio)


def sign(url: str, form: dict[str, str], token: str = TWILIO_TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, form)}


def post_signed(client: Any, path: str, form: dict[str, str], base: str = "http://localhost") -> Any:
    return client.post(path, data=form, headers=sign(base + path, form))


def send_sms(db: Any, rq_worker: Callable[[], None], transaction: Transaction, **options: Any) -> Message:
    """Start an SMS recovery and let the worker send its first message to the fake Twilio."""
    started = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id, "test"), now=utcnow(), **options
    )
    db.session.commit()  # which places the first send
    rq_worker()
    db.session.expire_all()
    return db.session.scalars(
        select(Message).where(Message.attempt_id == started.attempt.id).order_by(Message.id.desc())
    ).first()


@pytest.fixture
def sent(db, org, make_transaction, rq_worker) -> Message:
    transaction = make_transaction(org, customer_phone=PHONE, customer_email="ann@example.com")
    message = send_sms(db, rq_worker, transaction, channels=["sms"])
    assert message.status == M.SENT and message.provider_id.startswith("SM")
    return message


def status_path(message: Message) -> str:
    return f"/twilio/status?message={message.id}"


def report(client: Any, message: Message, status: str, **extra: str) -> Any:
    form = {"MessageSid": message.provider_id, "MessageStatus": status, "AccountSid": "AC1", **extra}
    return post_signed(client, status_path(message), form)


def reload(db: Any, message: Message) -> Message:
    db.session.expire_all()
    return db.session.get(Message, message.id)


# --- status callbacks -------------------------------------------------------------------


def test_each_sms_asks_twilio_to_report_to_our_status_url(sent, fake_twilio):
    [request] = fake_twilio.messages()

    assert request["StatusCallback"] == f"http://localhost/twilio/status?message={sent.id}"


def test_delivered_report_marks_the_message_delivered(client, db, sent):
    response = report(client, sent, "delivered")

    assert response.status_code == 204
    message = reload(db, sent)
    assert (message.status, message.delivery_status) == (M.DELIVERED, "delivered")
    assert message.delivered_at is not None


@pytest.mark.parametrize(
    ("early", "code", "final_status"),
    [
        ("delivered", None, M.DELIVERED),
        ("undelivered", "30003", M.FAILED),
        ("failed", "30005", M.UNDELIVERABLE),
    ],
)
def test_a_report_that_beats_our_record_of_the_send_still_settles_the_message(
    client, db, org, make_transaction, rq_worker, fake_twilio, early, code, final_status
):
    # Twilio calls back before it answers the create: the message is still "sending" here.
    def call_back_first(sid: str, form: dict[str, str]) -> None:
        report = {"MessageSid": sid, "MessageStatus": early, "AccountSid": "AC1"}
        if code:
            report["ErrorCode"] = code
        url = form["StatusCallback"]
        answer = client.post(url.removeprefix("http://localhost"), data=report, headers=sign(url, report))
        assert answer.status_code == 204

    fake_twilio.before_answer = call_back_first
    transaction = make_transaction(org, customer_phone=PHONE, customer_email=None)

    message = send_sms(db, rq_worker, transaction, channels=["sms"])

    assert (message.status, message.delivery_status) == (final_status, early)
    assert message.provider_id.startswith("SM") and message.sent_at is not None


@pytest.mark.parametrize(
    ("order", "final_status", "final_delivery"),
    [
        (["sent", "delivered"], M.DELIVERED, "delivered"),
        (["delivered", "sent"], M.DELIVERED, "delivered"),
        (["delivered", "queued", "sending", "sent"], M.DELIVERED, "delivered"),
        (["sending", "queued"], M.SENT, "sending"),
        (["delivered", "failed"], M.DELIVERED, "delivered"),
        (["failed", "delivered"], M.FAILED, "failed"),
        (["undelivered", "sent", "delivered"], M.FAILED, "undelivered"),
    ],
)
def test_reports_out_of_order_never_move_status_backwards(
    client, db, sent, order, final_status, final_delivery
):
    for status in order:
        assert report(client, sent, status, ErrorCode="30003").status_code == 204

    message = reload(db, sent)
    assert (message.status, message.delivery_status) == (final_status, final_delivery)


def test_repeated_report_is_applied_once(client, db, sent):
    for _ in range(2):
        report(client, sent, "undelivered", ErrorCode="30003")

    events = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "recovery.sms_undelivered")
    ).all()
    assert len(events) == 1


def test_transient_delivery_failure_is_not_retried_and_suppresses_nothing(client, db, sent):
    report(client, sent, "undelivered", ErrorCode="30003")  # unreachable handset: may be off

    message = reload(db, sent)
    assert message.status == M.FAILED and message.tries == claims.MAX_TRIES
    assert "30003" in message.error
    assert db.session.scalars(select(ContactSuppression)).all() == []


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("30006", SuppressionReason.UNDELIVERABLE),  # landline
        ("30005", SuppressionReason.UNDELIVERABLE),  # unknown handset
        ("21610", SuppressionReason.OPTED_OUT),
    ],
)
def test_permanent_delivery_error_marks_the_number_dead(client, db, sent, code, reason):
    report(client, sent, "failed", ErrorCode=code)

    message = reload(db, sent)
    assert message.status == M.UNDELIVERABLE
    [suppression] = db.session.scalars(select(ContactSuppression)).all()
    assert (suppression.organization_id, suppression.channel, suppression.address) == (
        sent.organization_id,
        "sms",
        PHONE,
    )
    assert suppression.reason == reason and suppression.message_id == sent.id
    transaction = db.session.get(Transaction, sent.transaction_id)
    assert "sms" not in contacts.available_channels(db.session, transaction)


def test_report_for_another_sid_on_the_message_url_changes_nothing(client, db, sent):
    form = {"MessageSid": "SM" + "9" * 32, "MessageStatus": "delivered"}

    assert post_signed(client, status_path(sent), form).status_code == 204

    assert reload(db, sent).status == M.SENT


def test_report_found_by_sid_alone(client, db, sent):
    form = {"MessageSid": sent.provider_id, "MessageStatus": "delivered"}

    assert post_signed(client, "/twilio/status", form).status_code == 204

    assert reload(db, sent).status == M.DELIVERED


SIGNATURES = {
    "missing": lambda url, form: {},
    "garbage": lambda url, form: {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
    "other token": lambda url, form: sign(url, form, token="someone-elses-token"),
    "other url": lambda url, form: sign("http://localhost/twilio/inbound", form),
    "other body": lambda url, form: sign(url, {**form, "MessageStatus": "sent"}),
}


@pytest.mark.parametrize("signature", SIGNATURES)
def test_unsigned_or_badly_signed_status_is_refused(client, db, sent, signature):
    form = {"MessageSid": sent.provider_id, "MessageStatus": "delivered"}
    url = "http://localhost" + status_path(sent)

    response = client.post(status_path(sent), data=form, headers=SIGNATURES[signature](url, form))

    assert response.status_code == 403
    assert reload(db, sent).status == M.SENT


@pytest.mark.parametrize("signature", SIGNATURES)
def test_unsigned_or_badly_signed_reply_is_refused(client, db, sent, signature):
    form = {"From": PHONE, "To": "+15005550006", "Body": "STOP"}
    url = "http://localhost/twilio/inbound"
    if signature == "other url":
        headers = sign("http://localhost/twilio/status", form)
    elif signature == "other body":
        headers = sign(url, {**form, "Body": "hello"})
    else:
        headers = SIGNATURES[signature](url, form)

    response = client.post("/twilio/inbound", data=form, headers=headers)

    assert response.status_code == 403
    assert db.session.scalars(select(ContactSuppression)).all() == []


@pytest.mark.parametrize("app_config", [{"TWILIO_AUTH_TOKEN": ""}])
def test_without_an_auth_token_nothing_is_accepted(client):
    form = {"MessageSid": "SM1", "MessageStatus": "delivered"}

    assert (
        client.post(
            "/twilio/status", data=form, headers=sign("http://localhost/twilio/status", form)
        ).status_code
        == 403
    )


class TestBehindAProxy:
    """Twilio signs the public https URL; the app sees http://localhost from the proxy."""

    @pytest.fixture
    def proxy_fix(self) -> int:
        return 0

    @pytest.fixture
    def app_config(self, smtp_server: Any, fake_twilio: Any, proxy_fix: int) -> dict[str, Any]:
        config = providers_config(smtp_server, fake_twilio)
        return {**config, "BASE_URL": "https://recovery.example", "PROXY_FIX": proxy_fix}

    def test_the_public_url_is_validated(self, client, db, sent):
        form = {"MessageSid": sent.provider_id, "MessageStatus": "delivered"}
        path = status_path(sent)

        signed_for_public = client.post(
            path, data=form, headers=sign("https://recovery.example" + path, form)
        )

        assert signed_for_public.status_code == 204
        assert reload(db, sent).status == M.DELIVERED

    @pytest.mark.parametrize("proxy_fix", [1])
    def test_forwarded_headers_rebuild_the_url_with_proxy_fix(self, app, client, db, sent):
        form = {"MessageSid": sent.provider_id, "MessageStatus": "delivered"}
        path = status_path(sent)
        headers = {
            **sign("https://localhost" + path, form),
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "localhost",
        }

        assert client.post(path, data=form, headers=headers).status_code == 204


# --- STOP and START ---------------------------------------------------------------------


def reply(client: Any, body: str, phone: str = PHONE) -> Any:
    return post_signed(client, "/twilio/inbound", {"From": phone, "To": "+15005550006", "Body": body})


def suppressions(db: Any) -> list[tuple[int, str, str, str]]:
    db.session.expire_all()
    rows = db.session.scalars(select(ContactSuppression).order_by(ContactSuppression.id))
    return [(r.organization_id, r.channel, r.address, r.reason) for r in rows]


@pytest.mark.parametrize(
    "body",
    ["STOP", "stop", "  Stop\n", "UNSUBSCRIBE", "end", "Quit", "CANCEL", "optout", "STOPALL", "revoke"],
)
def test_stop_words_opt_the_number_out(client, db, sent, body):
    response = reply(client, body)

    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    assert response.get_data(as_text=True) == '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
    assert suppressions(db) == [(sent.organization_id, "sms", PHONE, SuppressionReason.OPTED_OUT)]


@pytest.mark.parametrize("body", ["hello", "STOP please", "stopp", "", "YES STOP"])
def test_other_replies_change_nothing(client, db, sent, body):
    assert reply(client, body).status_code == 200

    assert suppressions(db) == []


def test_stop_is_on_the_timeline_and_in_the_audit(client, db, sent):
    reply(client, "STOP")

    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "recovery.sms_opted_out"))
    assert event.transaction_id == sent.transaction_id and event.details["keyword"] == "STOP"
    transaction = db.session.get(Transaction, sent.transaction_id)
    titles = [entry.title for entry in timeline(db.session, transaction)]
    assert "Customer replied STOP: no more text messages" in titles


def test_start_opts_back_in(client, db, sent):
    reply(client, "STOP")
    response = reply(client, " start ")

    assert response.status_code == 200
    assert suppressions(db) == []
    transaction = db.session.get(Transaction, sent.transaction_id)
    assert "sms" in contacts.available_channels(db.session, transaction)
    actions = db.session.scalars(
        select(AuditEvent.action).where(AuditEvent.action.like("recovery.sms_opted%"))
    )
    assert sorted(actions) == ["recovery.sms_opted_in", "recovery.sms_opted_out"]


def test_start_does_not_revive_a_dead_number(client, db, sent):
    report(client, sent, "failed", ErrorCode="30006")

    reply(client, "START")

    assert suppressions(db) == [(sent.organization_id, "sms", PHONE, SuppressionReason.UNDELIVERABLE)]


def test_stop_only_touches_organizations_that_texted_the_number(
    client, db, sent, make_org, make_transaction, rq_worker
):
    other = make_org(name="Other Shop")
    silent = make_org(name="Silent Shop")
    make_transaction(silent, customer_phone=PHONE)  # has the number, never texted it
    send_sms(db, rq_worker, make_transaction(other, customer_phone=PHONE), channels=["sms"])
    stranger = make_org(name="Stranger")
    send_sms(db, rq_worker, make_transaction(stranger, customer_phone="+14155550199"), channels=["sms"])

    reply(client, "STOP")

    assert {row[0] for row in suppressions(db)} == {sent.organization_id, other.id}


def test_unknown_number_is_answered_and_ignored(client, db, sent):
    assert reply(client, "STOP", phone="+14155550100").status_code == 200

    assert suppressions(db) == []


def test_opted_out_number_gets_no_more_sms_but_email_goes_on(
    client, db, org, make_transaction, rq_worker, fake_twilio, smtp_server
):
    transaction = make_transaction(org, customer_phone=PHONE, customer_email="ann@example.com")
    first = send_sms(db, rq_worker, transaction)  # both channels
    assert len(fake_twilio.messages()) == 1 and len(smtp_server.received) == 1

    reply(client, "STOP")
    attempt = db.session.get(RecoveryAttempt, first.attempt_id)
    attempt.next_send_at = utcnow()  # the next step is due now
    db.session.commit()
    jobs.schedule_next(attempt)
    rq_worker()

    assert len(fake_twilio.messages()) == 1
    assert len(smtp_server.received) == 2
    db.session.expire_all()
    step_two = db.session.scalars(
        select(Message).where(Message.attempt_id == attempt.id, Message.step == 1)
    ).all()
    assert [m.channel for m in step_two] == ["email"]
