"""Recoveries from the dashboard (buttons, list, outbox, timeline) and the JSON API, roles, isolation."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    Message,
    Organization,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.queue import get_queue
from recovery.recoveries import lifecycle
from tests.conftest import bearer


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    return make_org(name="Acme Shop", reply_to_email="billing@acme.example")


def attempt_of(db: Any, transaction: Transaction) -> RecoveryAttempt | None:
    db.session.expire_all()
    return db.session.scalar(select(RecoveryAttempt).where(RecoveryAttempt.transaction_id == transaction.id))


def start_directly(db: Any, transaction: Transaction) -> RecoveryAttempt:
    started = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id), now=utcnow()
    )
    db.session.commit()
    return started.attempt


# --- dashboard: start and cancel -----------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_the_start_button_is_for_operators_and_above(client, signed_in, org, make_transaction, role):
    user = signed_in(role, org=org)
    transaction = make_transaction(user.organization, customer_phone="+14155550123")

    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)

    assert ("Start recovery" in page) == (role != "viewer")
    if role != "viewer":
        assert 'name="channels" value="email" checked' in page
        assert 'name="channels" value="sms" checked' in page


def test_operator_starts_and_cancels_a_recovery(client, db, signed_in, org, make_transaction):
    user = signed_in("operator", org=org)
    transaction = make_transaction(org, customer_phone="+14155550123")

    response = client.post(
        f"/transactions/{transaction.id}/recoveries", data={"channels": ["sms"], "schedule": "0,2"}
    )

    assert response.status_code == 302
    attempt = attempt_of(db, transaction)
    assert attempt is not None and attempt.channel == "sms" and attempt.schedule == "0,2"
    assert get_queue().count == 1  # the first send is enqueued, after the commit
    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)
    assert "Recovery started: the first message is on its way." in page
    assert "Cancel recovery" in page and "Start recovery" not in page

    again = client.post(f"/transactions/{transaction.id}/recoveries", data={"channels": ["email"]})
    assert "A recovery is already running" in client.get(again.headers["Location"]).get_data(as_text=True)

    assert client.post(f"/recoveries/{attempt.id}/cancel").status_code == 302
    attempt = attempt_of(db, transaction)
    assert attempt.status == AttemptStatus.CANCELLED
    # The recovery is cancelled, not the transaction: it is open again.
    assert db.session.get(Transaction, transaction.id).status == TransactionStatus.FAILED
    # The waiting send was taken off the queue; closing the ways to pay it left open is queued.
    assert [job.func_name.rsplit(".", 1)[-1] for job in get_queue().jobs] == ["close_payment_options"]
    actions = {
        a for (a,) in db.session.execute(select(AuditEvent.action).where(AuditEvent.actor_user_id == user.id))
    }
    assert {"recovery.started", "recovery.cancelled"} <= actions


def test_viewer_cannot_start_or_cancel(client, db, signed_in, org, make_transaction):
    signed_in("viewer", org=org)
    transaction = make_transaction(org)
    running = make_transaction(org)
    attempt = start_directly(db, running)

    assert (
        client.post(f"/transactions/{transaction.id}/recoveries", data={"channels": ["email"]}).status_code
        == 403
    )
    assert client.post(f"/recoveries/{attempt.id}/cancel").status_code == 403

    assert attempt_of(db, transaction) is None
    assert attempt_of(db, running).status == AttemptStatus.SCHEDULED


def test_another_organizations_transaction_or_attempt_is_404(
    client, db, signed_in, make_org, make_transaction
):
    signed_in("owner")
    their_org = make_org(name="Their Merchant")
    theirs = make_transaction(their_org)
    their_attempt = start_directly(db, make_transaction(their_org))

    assert (
        client.post(f"/transactions/{theirs.id}/recoveries", data={"channels": ["email"]}).status_code == 404
    )
    assert client.post(f"/recoveries/{their_attempt.id}/cancel").status_code == 404
    assert attempt_of(db, theirs) is None
    db.session.expire_all()
    assert db.session.get(RecoveryAttempt, their_attempt.id).status == AttemptStatus.SCHEDULED
    assert "Their Merchant" not in client.get("/recoveries").get_data(as_text=True)


# --- the recoveries page, the outbox and the timeline ------------------------------------------------


def test_recoveries_page_lists_and_filters(client, db, signed_in, org, make_transaction):
    signed_in("viewer", org=org)
    running = start_directly(db, make_transaction(org, transaction_ref="RUN-1"))
    stopped = start_directly(db, make_transaction(org, transaction_ref="STOP-1"))
    lifecycle.cancel_recovery(db.session, stopped, Actor.system(org.id), now=utcnow())
    db.session.commit()

    everything = client.get("/recoveries").get_data(as_text=True)
    only_cancelled = client.get("/recoveries?status=cancelled").get_data(as_text=True)

    assert "RUN-1" in everything and "STOP-1" in everything
    assert "STOP-1" in only_cancelled and "RUN-1" not in only_cancelled
    assert 'href="/recoveries"' in everything  # in the navigation
    assert running.token not in everything


@pytest.mark.parametrize("before", [str(2**64), "-5", "1e3", "99999999999999999999999", "²", "٣"])
def test_recoveries_page_shows_the_first_page_for_a_made_up_position(
    client, db, signed_in, org, make_transaction, before
):
    # SQLite refuses integers past 64 bits outright: the page answered 500.
    signed_in("viewer", org=org)
    start_directly(db, make_transaction(org, transaction_ref="RUN-1"))

    response = client.get(f"/recoveries?before={before}")

    assert response.status_code == 200
    assert "RUN-1" in response.get_data(as_text=True)


def test_outbox_shows_messages_as_they_would_be_sent(client, db, signed_in, org, make_transaction, rq_worker):
    signed_in("viewer", org=org)
    transaction = make_transaction(org, transaction_ref="OUT-1", customer_phone="+14155550123")
    attempt = start_directly(db, transaction)  # its commit places the first send
    rq_worker()

    listing = client.get("/outbox").get_data(as_text=True)
    assert "Acme Shop: your payment of $50.00 did not go through" in listing
    assert "+14155550123" in listing
    email = db.session.scalar(select(Message).where(Message.channel == "email"))
    sms = db.session.scalar(select(Message).where(Message.channel == "sms"))

    detail = client.get(f"/outbox/{email.id}").get_data(as_text=True)
    assert "List-Unsubscribe-Post" in detail and "List-Unsubscribe=One-Click" in detail
    assert "Acme Shop &lt;no-reply@localhost&gt;" in detail
    assert f"http://localhost/pay/{attempt.token}" in detail
    html = client.get(f"/outbox/{email.id}/html")
    assert html.status_code == 200 and "Pay $50.00" in html.get_data(as_text=True)
    assert "frame-ancestors 'self'" in html.headers["Content-Security-Policy"]
    assert html.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert attempt.token in client.get(f"/outbox/{sms.id}").get_data(as_text=True)

    timeline = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)
    assert "Email handed to the provider" in timeline and "SMS handed to the provider" in timeline
    assert "Recovery started" in timeline


def test_outbox_of_another_organization_is_404(client, db, signed_in, make_org, make_transaction, rq_worker):
    signed_in("owner")
    theirs = make_transaction(make_org(name="Their Merchant"))
    start_directly(db, theirs)
    from recovery.recoveries import jobs

    jobs.sweep_once(utcnow())
    rq_worker()
    message = db.session.scalar(select(Message))

    assert client.get(f"/outbox/{message.id}").status_code == 404
    assert client.get(f"/outbox/{message.id}/html").status_code == 404
    assert "Their Merchant" not in client.get("/outbox").get_data(as_text=True)


# --- the API ------------------------------------------------------------------------------------------


def api_start(client: FlaskClient, raw: str, **body: Any) -> Any:
    return client.post("/v1/recoveries", json=body, headers=bearer(raw))


def test_api_starts_reads_and_cancels(client, db, org, make_transaction, make_token):
    make_transaction(org, transaction_ref="API-1", customer_phone="+14155550123")
    _token, raw = make_token(org, role="operator")

    created = api_start(client, raw, transaction_ref="API-1", channels=["email"], schedule=[0, 2, 4])

    assert created.status_code == 201, created.json
    body = created.json
    assert body["object"] == "recovery" and body["transaction_ref"] == "API-1"
    assert body["status"] == "scheduled" and body["channels"] == ["email"] and body["schedule"] == [0, 2, 4]
    assert body["next_send_at"].endswith("Z") and body["messages"] == []
    attempt = db.session.get(RecoveryAttempt, body["id"])
    assert attempt.token not in created.get_data(as_text=True)
    assert created.headers["Location"].endswith(f"/v1/recoveries/{attempt.id}")
    assert get_queue().count == 1

    got = client.get(f"/v1/recoveries/{attempt.id}", headers=bearer(raw))
    assert got.status_code == 200 and got.json["id"] == attempt.id

    conflict = api_start(client, raw, transaction_ref="API-1")
    assert conflict.status_code == 409 and conflict.json["error"]["type"] == "conflict"

    cancelled = client.post(f"/v1/recoveries/{attempt.id}/cancel", headers=bearer(raw))
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled"
    assert cancelled.json["next_send_at"] is None
    assert [job.func_name.rsplit(".", 1)[-1] for job in get_queue().jobs] == ["close_payment_options"]
    again = client.post(f"/v1/recoveries/{attempt.id}/cancel", headers=bearer(raw))
    assert again.status_code == 409
    events = db.session.scalars(select(AuditEvent).where(AuditEvent.action.like("recovery.%"))).all()
    assert {e.action for e in events} == {"recovery.started", "recovery.cancelled"}
    assert all(e.actor_api_token_id == _token.id for e in events)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, "transaction_ref"),
        ({"transaction_ref": "NOPE"}, 404, None),
        ({"transaction_ref": "API-2", "channels": "email"}, 422, "channels"),
        ({"transaction_ref": "API-2", "channels": ["pigeon"]}, 422, "channels"),
        ({"transaction_ref": "API-2", "channels": ["sms"]}, 422, "channels"),
        ({"transaction_ref": "API-2", "schedule": [3, 1]}, 422, "schedule"),
        ({"transaction_ref": "API-2", "schedule": {"a": 1}}, 422, "schedule"),
        ({"transaction_ref": "API-2", "surprise": 1}, 422, "surprise"),
    ],
)
def test_api_start_refuses_bad_input(client, db, org, make_transaction, make_token, body, status, field):
    make_transaction(org, transaction_ref="API-2", customer_phone=None)
    _token, raw = make_token(org, role="operator")

    response = api_start(client, raw, **body)

    assert response.status_code == status, response.json
    if field:
        assert field in response.json["error"]["fields"]
    assert db.session.query(RecoveryAttempt).count() == 0


@pytest.mark.parametrize("day", ["1e999", "-1e999"])
def test_api_start_refuses_an_infinite_schedule_day(client, db, org, make_transaction, make_token, day):
    # JSON's 1e999 parses to infinity, which int() refuses with OverflowError (it answered 500).
    make_transaction(org, transaction_ref="API-INF", customer_phone=None)
    _token, raw = make_token(org, role="operator")

    response = client.post(
        "/v1/recoveries",
        data=f'{{"transaction_ref": "API-INF", "schedule": [0, {day}]}}',
        headers={**bearer(raw), "Content-Type": "application/json"},
    )

    assert response.status_code == 422, response.json
    assert "whole numbers of days" in response.json["error"]["fields"]["schedule"]
    assert db.session.query(RecoveryAttempt).count() == 0


def test_api_roles(client, db, org, make_transaction, make_token):
    make_transaction(org, transaction_ref="API-3")
    _viewer, viewer = make_token(org, role="viewer")
    _operator, operator = make_token(org, role="operator")

    assert api_start(client, viewer, transaction_ref="API-3").status_code == 403
    attempt_id = api_start(client, operator, transaction_ref="API-3").json["id"]

    assert client.get(f"/v1/recoveries/{attempt_id}", headers=bearer(viewer)).status_code == 200
    assert client.post(f"/v1/recoveries/{attempt_id}/cancel", headers=bearer(viewer)).status_code == 403
    assert db.session.get(RecoveryAttempt, attempt_id).status == AttemptStatus.SCHEDULED


def test_api_hides_other_organizations(client, db, org, make_org, make_transaction, make_token):
    their_org = make_org()
    make_transaction(their_org, transaction_ref="THEIRS-1")
    theirs = start_directly(db, make_transaction(their_org))
    _token, raw = make_token(org, role="owner")

    assert (
        api_start(client, raw, transaction_ref="THEIRS-1").json["error"]["message"] == "Transaction not found"
    )
    for method, url in (
        ("GET", f"/v1/recoveries/{theirs.id}"),
        ("POST", f"/v1/recoveries/{theirs.id}/cancel"),
    ):
        response = client.open(url, method=method, headers=bearer(raw))
        assert response.status_code == 404
        assert response.json == {"error": {"type": "not_found", "message": "Recovery not found"}}
    db.session.expire_all()
    assert db.session.get(RecoveryAttempt, theirs.id).status == AttemptStatus.SCHEDULED


def test_dashboard_start_honours_the_fallback_checkbox(client, db, signed_in, org, make_transaction):
    signed_in("operator", org=org)
    with_fallback = make_transaction(org, customer_phone="+14155550123")
    without = make_transaction(org, customer_phone="+14155550124")
    page = client.get(f"/transactions/{with_fallback.id}").get_data(as_text=True)
    checkbox = re.search(r'<input[^>]*name="allow_fallback"[^>]*>', page)
    assert checkbox and "checked" in checkbox.group(0)  # the organization allows fallback

    client.post(
        f"/transactions/{with_fallback.id}/recoveries", data={"channels": ["email"], "allow_fallback": "y"}
    )
    client.post(f"/transactions/{without.id}/recoveries", data={"channels": ["email"]})  # unticked

    assert attempt_of(db, with_fallback).allow_fallback is True
    assert attempt_of(db, without).allow_fallback is False
