"""One state model: a cancelled recovery leaves the transaction open; closing it is separate, and reopenable.

The list, the page, the timeline and the API say the same thing, and a closed
transaction offers no way to start a recovery or to pay, anywhere.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.models.base import IllegalTransition
from recovery.recoveries import bulk, lifecycle
from recovery.transactions import closing
from tests.conftest import bearer, login

S = TransactionStatus
A = AttemptStatus


def start(db: Any, transaction: Transaction) -> RecoveryAttempt:
    attempt = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id), now=utcnow()
    ).attempt
    db.session.commit()
    return attempt


def fresh(db: Any, transaction: Transaction) -> Transaction:
    db.session.expire_all()
    found = db.session.get(Transaction, transaction.id)
    assert found is not None
    return found


INLINE = re.compile(r"</?(?:bdi|span|time|strong|code|a)\b[^>]*>")


def text_of(html: str) -> str:
    """The words a reader sees: inline tags vanish, block tags separate."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", INLINE.sub("", html))).split())


def page(client: FlaskClient, transaction: Transaction) -> str:
    response = client.get(f"/transactions/{transaction.id}")
    assert response.status_code == 200
    return response.get_data(as_text=True)


@pytest.fixture
def app_config(stripe_sandbox: Any) -> dict[str, Any]:
    """Stripe configured, so that a checkout for a closed transaction is refused for being closed."""
    stripe_sandbox.reset()
    return {"STRIPE_SECRET_KEY": stripe_sandbox.api_key, "STRIPE_API_BASE": stripe_sandbox.base_url}


# --- cancelling a recovery leaves the transaction open -------------------------------------


def test_a_cancelled_recovery_leaves_the_transaction_open_and_says_so(
    client, db, org, signed_in, make_transaction
):
    user = signed_in("operator", org=org)
    transaction = make_transaction(org, transaction_ref="CXL-1")
    attempt = start(db, transaction)

    response = client.post(f"/recoveries/{attempt.id}/cancel", follow_redirects=True)

    assert response.status_code == 200
    txn = fresh(db, transaction)
    assert txn.status == S.FAILED and txn.closed_at is None
    assert db.session.get(RecoveryAttempt, attempt.id).status == A.CANCELLED
    html = page(client, txn)
    words = text_of(html)
    assert f"Recovery cancelled on {txn.attempts[0].ended_at.day} " in words
    assert f"by {user.email}; the customer's link no longer works." in words
    assert "The transaction is still open: you can start a new recovery." in words
    assert "Start recovery" in html and "Close transaction" in html
    assert '<span class="status status-failed">failed</span>' in html
    assert '<span class="status status-cancelled">' not in html.split('id="recovery"')[0]
    # The timeline says the same.
    assert "Recovery cancelled — the customer's link no longer works; the transaction stays open" in words
    # The list too, and the API.
    listing = client.get("/transactions?q=CXL-1").get_data(as_text=True)
    assert '<span class="status status-failed">failed</span>' in listing
    api = client.get("/transactions/kpis")  # the same session: a page, not the API
    assert api.status_code == 200


def test_the_api_cancel_leaves_the_transaction_failed_and_a_new_recovery_can_start(
    client, db, org, make_transaction, make_token
):
    _, raw = make_token(org, role="operator")
    transaction = make_transaction(org, transaction_ref="CXL-API")
    attempt = start(db, transaction)

    cancelled = client.post(f"/v1/recoveries/{attempt.id}/cancel", headers=bearer(raw))
    read = client.get("/v1/transactions/CXL-API", headers=bearer(raw)).json
    again = client.post("/v1/recoveries", json={"transaction_ref": "CXL-API"}, headers=bearer(raw))

    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled"
    assert read["status"] == "failed" and read["closed_at"] is None
    assert [a["status"] for a in read["recovery_attempts"]] == ["cancelled"]
    assert again.status_code == 201, again.json
    assert fresh(db, transaction).status == S.RECOVERING


# --- closing and reopening ----------------------------------------------------------------


def test_closing_a_recovering_transaction_cancels_its_recovery_and_offers_only_reopen(
    client, db, org, signed_in, make_transaction
):
    user = signed_in("operator", org=org)
    transaction = make_transaction(org, transaction_ref="CLOSE-1", customer_phone="+14155550123")
    attempt = start(db, transaction)

    response = client.post(
        f"/transactions/{transaction.id}/close", data={"reason": "  Paid   by cheque "}, follow_redirects=True
    )

    words = text_of(response.get_data(as_text=True))
    assert (
        "Transaction CLOSE-1 closed: nothing will be sent, and its running recovery was cancelled." in words
    )
    txn = fresh(db, transaction)
    assert txn.status == S.CANCELLED and txn.closed_by == user.email and txn.closed_reason == "Paid by cheque"
    assert db.session.get(RecoveryAttempt, attempt.id).status == A.CANCELLED
    html = page(client, txn)
    words = text_of(html)
    assert f"Closed by {user.email} on {txn.closed_at.day} " in words
    assert ": nothing will be sent (Paid by cheque)." in words
    assert "No recovery, checkout or payment link can be started until the transaction is reopened." in words
    assert "Reopen transaction" in html
    for offer in ("Start recovery", "Create checkout session", "Create payment link", "Close transaction"):
        assert offer not in html, offer
    assert '<span class="status status-cancelled">closed</span>' in html
    assert "Closed — nothing will be sent: Paid by cheque" in words  # the timeline
    listing = client.get("/transactions?q=CLOSE-1").get_data(as_text=True)
    assert '<span class="status status-cancelled">closed</span>' in listing
    actions = set(db.session.scalars(select(AuditEvent.action).where(AuditEvent.transaction_id == txn.id)))
    assert {"recovery.cancelled", "transaction.closed"} <= actions


def test_a_closed_transaction_refuses_every_way_to_ask_for_money(
    client, db, org, make_transaction, make_token
):
    _, raw = make_token(org, role="operator")
    transaction = make_transaction(org, transaction_ref="SHUT-1")
    closing.close_transaction(db.session, transaction, Actor.system(org.id, "ops"), now=utcnow())
    db.session.commit()

    api_start = client.post("/v1/recoveries", json={"transaction_ref": "SHUT-1"}, headers=bearer(raw))
    checkout = client.post(
        "/v1/payments/stripe/checkout-sessions", json={"transaction_ref": "SHUT-1"}, headers=bearer(raw)
    )
    link = client.post(
        "/v1/payments/stripe/payment-links", json={"transaction_ref": "SHUT-1"}, headers=bearer(raw)
    )

    assert api_start.status_code == 409
    assert api_start.json["error"]["message"] == (
        "Transaction SHUT-1 is closed: nothing is sent for it. Reopen it to start a recovery."
    )
    for answer in (checkout, link):
        assert answer.status_code == 409, answer.json
        assert "SHUT-1 is closed: nothing is collected for it" in answer.json["error"]["message"]
    assert fresh(db, transaction).status == S.CANCELLED
    assert (
        db.session.scalar(select(RecoveryAttempt.id).where(RecoveryAttempt.transaction_id == transaction.id))
        is None
    )


def test_the_page_start_and_a_bulk_start_skip_a_closed_transaction(
    client, db, org, signed_in, make_transaction
):
    signed_in("operator", org=org)
    closed = make_transaction(org, transaction_ref="SHUT-2")
    closing.close_transaction(db.session, closed, Actor.system(org.id, "ops"), now=utcnow())
    db.session.commit()

    response = client.post(
        f"/transactions/{closed.id}/recoveries", data={"channels": ["email"]}, follow_redirects=True
    )

    assert "SHUT-2 is closed: nothing is sent for it. Reopen it to start a recovery." in text_of(
        response.get_data(as_text=True)
    )
    started = bulk.create(db.session, Actor.system(org.id), [closed.id], "any")
    db.session.commit()
    bulk.run(db.session, started.id)
    db.session.expire_all()
    assert fresh(db, closed).status == S.CANCELLED
    assert (
        db.session.scalar(select(RecoveryAttempt.id).where(RecoveryAttempt.transaction_id == closed.id))
        is None
    )


def test_reopen_takes_it_back_to_failed_and_a_recovery_can_start(
    client, db, org, signed_in, make_transaction
):
    user = signed_in("admin", org=org)
    transaction = make_transaction(org, transaction_ref="BACK-1")
    closing.close_transaction(db.session, transaction, Actor.system(org.id, "ops"), now=utcnow(), reason="x")
    db.session.commit()

    response = client.post(f"/transactions/{transaction.id}/reopen", follow_redirects=True)

    assert "Transaction BACK-1 reopened: you can start a recovery." in text_of(
        response.get_data(as_text=True)
    )
    txn = fresh(db, transaction)
    assert txn.status == S.FAILED and (txn.closed_at, txn.closed_by, txn.closed_reason) == (None, None, None)
    html = page(client, txn)
    assert "Start recovery" in html and "Reopen transaction" not in html
    assert "Reopened — open again: a recovery or a payment can be started" in text_of(html)
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "transaction.reopened"))
    assert event.actor_label == user.email and event.details["closed_by"] == "ops"
    assert start(db, txn).status == A.SCHEDULED


def test_the_api_closes_and_reopens(client, db, org, make_transaction, make_token):
    _, raw = make_token(org, role="operator", name="Back office")
    transaction = make_transaction(org, transaction_ref="API-SHUT")
    attempt = start(db, transaction)

    closed = client.post(
        "/v1/transactions/API-SHUT/close", json={"reason": "Refunded by hand"}, headers=bearer(raw)
    )
    again = client.post("/v1/transactions/API-SHUT/close", headers=bearer(raw))
    reopened = client.post("/v1/transactions/API-SHUT/reopen", headers=bearer(raw))

    assert closed.status_code == 200, closed.json
    assert closed.json["status"] == "cancelled" and closed.json["closed_reason"] == "Refunded by hand"
    assert closed.json["closed_by"] == "API token Back office" and closed.json["closed_at"].endswith("Z")
    assert [a["status"] for a in closed.json["recovery_attempts"]] == ["cancelled"]
    assert (
        again.status_code == 409
        and again.json["error"]["message"] == "Transaction API-SHUT is already closed."
    )
    assert reopened.status_code == 200 and reopened.json["status"] == "failed"
    assert reopened.json["closed_at"] is None
    assert db.session.get(RecoveryAttempt, attempt.id).status == A.CANCELLED


def test_a_reason_loses_direction_overrides_and_keeps_its_words(
    client, db, org, make_transaction, make_token
):
    _, raw = make_token(org, role="operator")
    transaction = make_transaction(org, transaction_ref="RLO-1")

    answer = client.post(
        "/v1/transactions/RLO-1/close", json={"reason": "Paid \u202ein cash\u202c <b>"}, headers=bearer(raw)
    )

    assert answer.status_code == 200
    assert fresh(db, transaction).closed_reason == "Paid in cash <b>"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"reason": 5}, 422, "The reason must be text."),
        ({"reason": "x" * 501}, 422, "The reason is 501 characters long; keep it to 500."),
        ({"why": "no"}, 422, "Unknown field(s): why."),
        ({"reason": "paid\x07"}, 422, "The reason holds control characters; write it as plain text."),
        ({"reason": "\ud800"}, 422, "The reason holds control characters; write it as plain text."),
    ],
)
def test_the_api_close_refuses_bad_input_and_changes_nothing(
    client, db, org, make_transaction, make_token, body, status, message
):
    _, raw = make_token(org, role="operator")
    transaction = make_transaction(org, transaction_ref="BAD-1")

    answer = client.post("/v1/transactions/BAD-1/close", json=body, headers=bearer(raw))

    assert answer.status_code == status and answer.json["error"]["message"] == message
    assert fresh(db, transaction).status == S.FAILED


@pytest.mark.parametrize(
    ("status", "action", "message"),
    [
        (S.RECOVERED, "close", "Transaction ST-1 is recovered: there is nothing left to close."),
        (S.REFUNDED, "close", "Transaction ST-1 is refunded: there is nothing left to close."),
        (S.FAILED, "reopen", "Transaction ST-1 is failed, not closed: there is nothing to reopen."),
        (S.UNRECOVERED, "reopen", "Transaction ST-1 is unrecovered, not closed: there is nothing to reopen."),
    ],
)
def test_close_and_reopen_refuse_what_does_not_fit_the_state(
    client, db, org, make_transaction, make_token, status, action, message
):
    _, raw = make_token(org, role="operator")
    transaction = make_transaction(org, transaction_ref="ST-1", status=status)

    answer = client.post(f"/v1/transactions/ST-1/{action}", headers=bearer(raw))

    assert answer.status_code == 409 and answer.json["error"]["message"] == message
    assert fresh(db, transaction).status == status


def test_close_and_reopen_need_an_operator_of_the_same_organization(
    app, client, db, org, make_org, make_user, make_transaction, make_token
):
    mine = make_transaction(org, transaction_ref="MINE-1")
    theirs = make_transaction(make_org(), transaction_ref="THEIRS-1")
    _, viewer = make_token(org, role="viewer")
    _, operator = make_token(org, role="operator")

    assert client.post("/v1/transactions/MINE-1/close", headers=bearer(viewer)).status_code == 403
    assert client.post("/v1/transactions/THEIRS-1/close", headers=bearer(operator)).status_code == 404
    viewer_user = make_user(org=org, role="viewer")
    operator_user = make_user(org=org, role="operator")
    as_viewer, as_operator = app.test_client(), app.test_client()
    login(as_viewer, viewer_user)
    login(as_operator, operator_user)
    assert as_viewer.post(f"/transactions/{mine.id}/close").status_code == 403
    assert as_viewer.post(f"/transactions/{mine.id}/reopen").status_code == 403
    assert as_operator.post(f"/transactions/{theirs.id}/close").status_code == 404
    assert as_operator.post(f"/transactions/{theirs.id}/reopen").status_code == 404
    assert fresh(db, mine).status == S.FAILED and fresh(db, theirs).status == S.FAILED


@pytest.mark.parametrize(
    ("start_status", "to"),
    [
        (S.RECOVERING, S.CANCELLED),
        (S.CANCELLED, S.RECOVERING),
        (S.RECOVERED, S.FAILED),
        (S.CANCELLED, S.UNRECOVERED),
    ],
)
def test_the_transition_table_refuses_what_the_model_forbids(make_transaction, start_status, to):
    transaction = make_transaction(status=start_status)

    with pytest.raises(IllegalTransition):
        transaction.transition(to)


def test_a_payment_for_a_closed_transaction_still_recovers_it(make_transaction):
    transaction = make_transaction(status=S.CANCELLED)

    assert transaction.transition(S.RECOVERED)
