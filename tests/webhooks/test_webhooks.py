"""Stripe webhooks: signature checks, storing before anything else, and processing once in effect.

Signatures come from stripe-python's own `WebhookSignature.generate_signature_header`.
Processing runs the real RQ job function (or a real burst worker) on both databases.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from recovery import create_app
from recovery.config import ConfigError
from recovery.extensions import db as _db
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    CheckoutSession,
    CheckoutStatus,
    Message,
    MessageStatus,
    Organization,
    PaymentFulfilment,
    RecoveryAttempt,
    Transaction,
    TransactionSource,
    TransactionStatus,
    WebhookEvent,
    WebhookState,
    utcnow,
)
from recovery.queue import get_queue
from recovery.webhooks import handlers, jobs, matching, receiving, services
from recovery.webhooks.context import Context
from tests.conftest import base_config
from tests.fixtures import stripe_events as se


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_WEBHOOK_RETRY_SECONDS": "0,0"}


@pytest.fixture
def log_lines(app):
    root = logging.getLogger()
    handler = root.handlers[0]
    buffer = io.StringIO()
    old_stream = handler.setStream(buffer)
    old_level = root.level
    root.setLevel(logging.INFO)

    def read() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    yield read
    handler.setStream(old_stream)
    root.setLevel(old_level)


def events() -> list[WebhookEvent]:
    _db.session.expire_all()
    return list(_db.session.scalars(select(WebhookEvent).order_by(WebhookEvent.id)))


def stored(evt_id: str) -> WebhookEvent:
    _db.session.expire_all()
    found = _db.session.scalar(select(WebhookEvent).where(WebhookEvent.stripe_event_id == evt_id))
    assert found is not None
    return found


def reload(model: type, id_: int) -> Any:
    _db.session.expire_all()
    return _db.session.get(model, id_)


def queued_ids() -> list[str]:
    return list(get_queue().job_ids)


def run_job(job: Any, *args: Any) -> Any:
    """Run an RQ job's body in this process, as the work horse would (minus its fork-only pool reset)."""
    try:
        return job.__wrapped__(*args)
    finally:
        _db.session.remove()


def txn_of(recovering: dict[str, Any]) -> Transaction:
    """The fixture's transaction, freshly loaded (a job run detaches what the test held)."""
    return reload(Transaction, recovering["txn_id"])


def deliver(client: Any, evt: dict[str, Any]) -> str:
    """POST the signed event, then run its processing job in this process."""
    response = se.post(client, evt)
    assert response.status_code == 200, response.data
    run_job(jobs.process_webhook_event, evt["id"])
    return str(stored(evt["id"]).status)


def timeline_actions(txn_id: int) -> list[str]:
    _db.session.expire_all()
    return list(
        _db.session.scalars(
            select(AuditEvent.action).where(AuditEvent.transaction_id == txn_id).order_by(AuditEvent.id)
        )
    )


@pytest.fixture
def recovering(db, make_org, make_transaction) -> dict[str, Any]:
    """A transaction being recovered: an active attempt, a queued message, an open Checkout Session."""
    org = make_org()
    txn = make_transaction(org, status=TransactionStatus.RECOVERING)
    attempt = RecoveryAttempt(
        organization_id=org.id,
        transaction_id=txn.id,
        channel="email",
        token=se.new_id("tok"),
        status=AttemptStatus.NOTIFIED,
        expires_at=utcnow() + timedelta(days=7),
    )
    db.session.add(attempt)
    db.session.flush()
    message = Message(
        organization_id=org.id,
        attempt_id=attempt.id,
        transaction_id=txn.id,
        step=1,
        channel="email",
        recipient=txn.customer_email,
        status=MessageStatus.QUEUED,
    )
    session_id = se.new_id("cs")
    record = CheckoutSession(
        organization_id=org.id,
        transaction_id=txn.id,
        attempt_id=attempt.id,
        idempotency_key=se.new_id("key"),
        request_fingerprint="x",
        stripe_session_id=session_id,
        status=CheckoutStatus.OPEN,
        amount=txn.amount,
        currency=txn.currency,
        expires_at=utcnow() + timedelta(hours=1),
    )
    db.session.add_all([message, record])
    db.session.commit()
    return {
        "org": org,
        "org_id": org.id,
        "txn": txn,
        "txn_id": txn.id,
        "attempt_id": attempt.id,
        "message_id": message.id,
        "record_id": record.id,
        "session_id": session_id,
    }


# --- receiving: signatures ---------------------------------------------------------


def test_a_valid_event_is_stored_then_enqueued_then_answered(client, log_lines):
    evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})

    response = se.post(client, evt)

    assert response.status_code == 200
    assert response.json == {"received": True, "duplicate": False}
    [row] = events()
    assert (row.stripe_event_id, row.type, row.status, row.attempts) == (evt["id"], evt["type"], "pending", 0)
    assert row.api_version == "2026-10-28.endive" and row.livemode is False and row.object_id == "cus_1"
    assert row.stripe_created_at is not None and row.payload == evt
    assert queued_ids() == [jobs.job_id(evt["id"])]
    [line] = [e for e in log_lines() if e["event"] == "stripe_webhook_received"]
    assert line["event_id"] == evt["id"] and line["client"] == "127.0.0.1"


def test_a_trailing_slash_is_served_not_redirected(client):
    evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})

    response = se.post(client, evt, path=se.URL + "/")

    assert response.status_code == 200
    assert len(events()) == 1


def test_the_endpoint_answers_only_post(client):
    response = client.get(se.URL)

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.json["error"]["type"] == "method_not_allowed"
    assert events() == []


def test_paths_below_the_endpoint_are_flasks_not_the_receivers(client):
    evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})

    response = se.post(client, evt, path=se.URL + "/extra")

    assert response.status_code == 404
    assert events() == []


def test_the_answer_and_the_log_lines_carry_the_request_id(client, log_lines):
    evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})

    response = se.post(client, evt, **{"X-Request-ID": "stripe-delivery-0001"})
    fresh = se.post(client, se.event("customer.created", {"id": "cus_2", "object": "customer"}))

    assert response.headers["X-Request-ID"] == "stripe-delivery-0001"
    assert response.headers["Cache-Control"] == "no-store"
    [line, _] = [e for e in log_lines() if e["event"] == "stripe_webhook_received"]
    assert line["request_id"] == "stripe-delivery-0001"
    assert len(fresh.headers["X-Request-ID"]) == 32  # ours, when the caller sends none


def test_an_unexpected_error_answers_500_as_json_and_is_logged(client, log_lines, monkeypatch):
    def broken(stripe_event_id: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(jobs, "enqueue_processing", broken)
    evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})

    response = se.post(client, evt)

    assert response.status_code == 500  # Stripe sends it again
    assert response.json["error"]["type"] == "internal_error"
    [line] = [e for e in log_lines() if e["event"] == "stripe_webhook_error"]
    assert "RuntimeError: a bug" in line["exception"] and line["client"] == "127.0.0.1"
    assert len(events()) == 1  # stored before the error: the redelivery is a duplicate, the sweeper queues it
    assert se.post(client, evt).json == {"received": True, "duplicate": True}


@pytest.mark.parametrize("app_config", [{"STRIPE_WEBHOOK_SECRET": se.SECRET, "PROXY_FIX": 1}])
def test_behind_a_proxy_the_log_names_the_forwarded_client(client, log_lines):
    evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})

    response = se.post(client, evt, **{"X-Forwarded-For": "203.0.113.9"})

    assert response.status_code == 200
    [line] = [e for e in log_lines() if e["event"] == "stripe_webhook_received"]
    assert line["client"] == "203.0.113.9"


def _flip_one_byte(payload: str) -> str:
    index = payload.index('"type"') + 3
    return payload[:index] + chr(ord(payload[index]) ^ 1) + payload[index + 1 :]


@pytest.mark.parametrize(
    "case",
    [
        "no header",
        "empty header",
        "wrong secret",
        "one flipped byte",
        "re-serialised JSON",
        "t = now - 301",
        "t = now + 301",
        "no v1",
        "garbage header",
    ],
)
def test_a_bad_signature_is_refused_and_nothing_is_stored(client, log_lines, case):
    evt = se.event("checkout.session.completed", se.checkout_session(None))
    payload = se.body(evt)
    now = int(time.time())
    header: str | None = se.sign(payload)
    if case == "no header":
        header = None
    elif case == "empty header":
        header = ""
    elif case == "wrong secret":
        header = se.sign(payload, "whsec_someone_else")
    elif case == "one flipped byte":
        payload = _flip_one_byte(payload)
    elif case == "re-serialised JSON":
        header = se.sign(json.dumps(json.loads(payload), separators=(",", ":")))
    elif case == "t = now - 301":
        header = se.sign(payload, timestamp=now - 301)
    elif case == "t = now + 301":
        header = se.sign(payload, timestamp=now + 301)
    elif case == "no v1":
        header = f"t={now},v0=abc"
    elif case == "garbage header":
        header = "nonsense"
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header

    response = client.post(se.URL, data=payload.encode(), headers=headers)

    assert response.status_code == 400
    assert response.json["error"]["message"].startswith(
        "missing signature" if not header else "invalid signature"
    )
    assert events() == []
    assert queued_ids() == []
    [line] = [e for e in log_lines() if e["event"] == "stripe_webhook_signature_invalid"]
    assert line["client"] == "127.0.0.1" and line["level"] == "warning"


def test_a_timestamp_just_inside_the_tolerance_is_accepted(client):
    evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})
    payload = se.body(evt)
    header = se.sign(payload, timestamp=int(time.time()) - 290)

    response = client.post(se.URL, data=payload.encode(), headers={"Stripe-Signature": header})

    assert response.status_code == 200


class TestRotation:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        return {"STRIPE_WEBHOOK_SECRET": "whsec_new, whsec_old"}

    def test_two_v1_signatures_one_by_a_configured_secret(self, client):
        evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})
        payload = se.body(evt)
        now = int(time.time())
        unknown = se.sign(payload, "whsec_retired", now).split(",")[1]
        old = se.sign(payload, "whsec_old", now).split(",")[1]

        response = client.post(
            se.URL, data=payload.encode(), headers={"Stripe-Signature": f"t={now},{unknown},{old}"}
        )

        assert response.status_code == 200

    @pytest.mark.parametrize("secret", ["whsec_new", "whsec_old"])
    def test_either_configured_secret_is_accepted(self, client, secret):
        evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})

        assert se.post(client, evt, secret=secret).status_code == 200

    def test_no_configured_secret_signed_it(self, client):
        evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})

        assert se.post(client, evt, secret="whsec_retired").status_code == 400
        assert events() == []


@pytest.mark.parametrize("tolerance", [0, -1])
def test_a_tolerance_of_zero_is_refused_at_start_up(tolerance):
    config = base_config("sqlite://", "redis://127.0.0.1:6379/0", STRIPE_WEBHOOK_TOLERANCE_SECONDS=tolerance)

    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_TOLERANCE_SECONDS"):
        create_app(config)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json at all", "invalid body: not JSON"),
        ('{"id": "evt_1", "object": "charge"}', "invalid body: not a Stripe event"),
        ('["a list"]', "invalid body: not a Stripe event"),
        ('{"id": "evt_1", "object": "event", "type": "x", "data": {}}', "invalid body: not a Stripe event"),
    ],
)
def test_a_signed_body_that_is_not_an_event_is_refused(client, payload, message):
    response = client.post(se.URL, data=payload.encode(), headers={"Stripe-Signature": se.sign(payload)})

    assert response.status_code == 400
    assert response.json["error"]["message"] == message
    assert events() == []


def test_a_body_over_one_mebibyte_is_refused_with_413(client, log_lines):
    evt = se.event("customer.created", {"id": "cus_1", "object": "customer", "pad": "x" * (1024 * 1024)})

    response = se.post(client, evt)

    assert response.status_code == 413
    assert events() == [] and queued_ids() == []
    assert any(e["event"] == "stripe_webhook_too_large" and e["client"] for e in log_lines())


def test_a_redelivery_answers_200_and_changes_nothing(client):
    evt = se.event("customer.created", {"id": "cus_1", "object": "customer"})
    se.post(client, evt)
    first = events()[0]
    received_at = first.received_at

    again = se.post(client, evt)

    assert again.status_code == 200 and again.json["duplicate"] is True
    [row] = events()
    assert row.received_at == received_at
    assert queued_ids() == [jobs.job_id(evt["id"])]
    assert len(get_queue()) == 1


def test_a_database_outage_answers_5xx_so_stripe_retries(client, monkeypatch):
    def down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("INSERT INTO webhook_event", {}, Exception("connection refused"))

    monkeypatch.setattr(receiving, "store_event", down)

    response = se.post(client, se.event("customer.created", {"id": "cus_1", "object": "customer"}))

    assert response.status_code == 503
    assert queued_ids() == []


def test_no_login_and_no_csrf_token_are_needed(app, make_user):
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()

    response = se.post(client, se.event("customer.created", {"id": "cus_1", "object": "customer"}))

    assert response.status_code == 200


# --- Redis down: stored, 200, swept later -----------------------------------------------


class TestRedisDown:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        # Nothing listens on port 1: every Redis call fails at once.
        return {"STRIPE_WEBHOOK_SECRET": se.SECRET, "REDIS_URL": "redis://127.0.0.1:1/0"}

    def test_the_event_is_stored_answered_and_later_processed_by_the_sweeper(
        self, app, client, recovering, redis_url, rq_worker
    ):
        evt = se.event(
            "checkout.session.completed",
            se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_intent="pi_down"),
        )

        response = se.post(client, evt)

        assert response.status_code == 200
        assert stored(evt["id"]).status == WebhookState.PENDING

        # Redis is back; a minute later the sweeper (run as RQ runs it) finds the event.
        app.extensions["redis"] = Redis.from_url(redis_url)
        assert run_job(jobs.sweep_webhook_events) == {"pending": 0, "enqueued": 0}  # too fresh to sweep
        row = stored(evt["id"])
        row.received_at = utcnow() - timedelta(minutes=2)
        _db.session.commit()
        assert run_job(jobs.sweep_webhook_events) == {"pending": 1, "enqueued": 1}
        assert run_job(jobs.sweep_webhook_events) == {
            "pending": 1,
            "enqueued": 0,
        }  # its job is already queued
        rq_worker()

        assert stored(evt["id"]).status == WebhookState.PROCESSED
        assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERED


def test_the_worker_arms_the_sweeper_and_the_reconciliation_once(app):
    from recovery.queue import RECONCILIATION, WEBHOOK_SWEEP, arm_periodic, periodic

    now = utcnow()
    assert {WEBHOOK_SWEEP, RECONCILIATION} <= set(arm_periodic(now))
    assert arm_periodic(now) == []  # a second worker start leaves them alone
    queued = set(get_queue().job_ids)
    assert {
        periodic(name).job_id(periodic(name).slot(now)) for name in (WEBHOOK_SWEEP, RECONCILIATION)
    } <= queued


# --- processing: checkout sessions ---------------------------------------------------------


def test_a_paid_session_recovers_the_transaction_once_and_stops_everything_else(client, recovering):
    evt = se.event(
        "checkout.session.completed",
        se.checkout_session(
            txn_of(recovering),
            id=recovering["session_id"],
            payment_intent="pi_paid",
            attempt_id=recovering["attempt_id"],
        ),
    )

    assert deliver(client, evt) == WebhookState.PROCESSED

    txn = reload(Transaction, recovering["txn_id"])
    assert txn.status == TransactionStatus.RECOVERED
    assert txn.recovered_amount == 5000 and txn.recovered_at is not None
    assert txn.stripe_payment_intent_id == "pi_paid"
    attempt = reload(RecoveryAttempt, recovering["attempt_id"])
    assert attempt.status == AttemptStatus.COMPLETED and attempt.completed_at is not None
    assert reload(Message, recovering["message_id"]).status == MessageStatus.CANCELLED
    record = reload(CheckoutSession, recovering["record_id"])
    assert (record.status, record.payment_status, record.stripe_payment_intent_id) == (
        "complete",
        "paid",
        "pi_paid",
    )
    row = stored(evt["id"])
    assert row.organization_id == recovering["org_id"] and row.attempts == 1 and row.processed_at
    assert timeline_actions(recovering["txn_id"]) == ["stripe.payment_recovered"]
    # The close-the-other-ways-to-pay job follows the commit.
    assert any(j.func_name.endswith("close_payment_options") for j in get_queue().jobs)


def test_the_same_event_processed_twice_applies_once(client, recovering):
    evt = se.event(
        "checkout.session.completed", se.checkout_session(txn_of(recovering), id=recovering["session_id"])
    )
    deliver(client, evt)

    outcome = services.process_event(_db.session, evt["id"], lambda: None)

    assert outcome.ran is False and outcome.state == WebhookState.PROCESSED
    assert stored(evt["id"]).attempts == 1
    assert timeline_actions(recovering["txn_id"]) == ["stripe.payment_recovered"]


def _queued_calls() -> list[tuple[str, tuple[Any, ...]]]:
    return [(job.func_name.rsplit(".", 1)[-1], tuple(job.args)) for job in get_queue().jobs]


def test_a_job_run_again_queues_the_follow_ups_the_queue_lost(client, recovering):
    """Redis failing (or the worker dying) after the commit loses the follow-ups; RQ's retry restores them."""
    evt = se.event(
        "checkout.session.completed", se.checkout_session(txn_of(recovering), id=recovering["session_id"])
    )
    deliver(client, evt)
    get_queue().empty()  # what the queue holds when the enqueue after the commit never happened

    assert run_job(jobs.process_webhook_event, evt["id"]) == WebhookState.PROCESSED

    assert _queued_calls() == [("close_payment_options", (recovering["txn_id"], recovering["session_id"]))]
    assert timeline_actions(recovering["txn_id"]) == ["stripe.payment_recovered"]  # applied once
    assert stored(evt["id"]).attempts == 1


def test_a_job_run_again_for_an_import_queues_its_auto_start_again(client, make_org):
    org_id = make_org(import_stripe_failures=True).id
    intent = se.payment_intent(
        None,
        status="requires_payment_method",
        meta={"organization_id": str(org_id)},
        failure=("card_declined", "insufficient_funds", "Your card has insufficient funds."),
        receipt_email="buyer@example.com",
    )
    # Two failures of one PaymentIntent, both stored before either is applied.
    first, second = (se.event("payment_intent.payment_failed", intent) for _ in range(2))
    for evt in (first, second):
        assert se.post(client, evt).status_code == 200
    run_job(jobs.process_webhook_event, first["id"])  # the second is taken along
    txn_id = _db.session.scalar(select(Transaction.id).where(Transaction.organization_id == org_id))
    assert stored(second["id"]).status == WebhookState.PROCESSED

    get_queue().empty()
    run_job(jobs.process_webhook_event, first["id"])
    assert _queued_calls() == [("start_imported_recovery", (txn_id,))]

    # The second only noted a failure on what the first imported: run again, it queues nothing.
    get_queue().empty()
    run_job(jobs.process_webhook_event, second["id"])
    assert _queued_calls() == []


def test_a_job_run_again_after_its_follow_ups_were_queued_adds_none(client, recovering):
    """Another worker's batch applied the event and queued its follow-ups: no second close job."""
    evt = se.event(
        "checkout.session.completed", se.checkout_session(txn_of(recovering), id=recovering["session_id"])
    )
    deliver(client, evt)
    closing = [("close_payment_options", (recovering["txn_id"], recovering["session_id"]))]
    assert [call for call in _queued_calls() if call[0] == "close_payment_options"] == closing

    run_job(jobs.process_webhook_event, evt["id"])

    assert [call for call in _queued_calls() if call[0] == "close_payment_options"] == closing


def test_a_job_run_again_for_an_event_that_only_noted_queues_nothing(client, recovering):
    evt = se.event(
        "payment_intent.payment_failed",
        se.declined(txn_of(recovering)),
    )
    deliver(client, evt)
    get_queue().empty()

    run_job(jobs.process_webhook_event, evt["id"])

    assert _queued_calls() == []


def test_two_event_ids_for_one_session_fulfil_it_once(client, recovering):
    session = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_intent="pi_once")
    first = se.event("checkout.session.completed", session)
    second = se.event("checkout.session.completed", session)  # Stripe re-sent it under a new id

    assert deliver(client, first) == WebhookState.PROCESSED
    assert deliver(client, second) == WebhookState.PROCESSED

    assert _db.session.scalar(select(func.count()).select_from(PaymentFulfilment)) == 1
    assert timeline_actions(recovering["txn_id"]) == ["stripe.payment_recovered"]


def test_stored_ids_find_the_best_row_first(db, recovering, make_transaction):
    """One query ranks every row that holds one of the object's ids; the order is the matching rule.

    Best first: our session record by session id (0), a transaction by session id (1),
    our session record by PaymentIntent (2), a transaction by PaymentIntent (3),
    a fulfilment by PaymentIntent (4), a transaction by Payment Link (5).
    """
    org = recovering["org"]
    record = db.session.get(CheckoutSession, recovering["record_id"])
    record.stripe_payment_intent_id = "pi_record"
    db.session.commit()
    ours = (recovering["txn_id"], recovering["attempt_id"])
    by_session = make_transaction(
        org,
        stripe_checkout_session_id="cs_only_on_a_transaction",
        stripe_payment_intent_id="pi_record",
        stripe_payment_link_id="plink_a",
    )
    by_intent = make_transaction(org, stripe_payment_intent_id="pi_txn_and_fulfilment")
    fulfilled, fulfilled_too = make_transaction(org), make_transaction(org)
    db.session.add_all(
        PaymentFulfilment(
            organization_id=org.id,
            transaction_id=txn.id,
            stripe_payment_intent_id=intent,
            amount=5000,
            currency="usd",
            source="payment_intent.succeeded",
        )
        for txn, intent in ((fulfilled_too, "pi_txn_and_fulfilment"), (fulfilled, "pi_fulfilment_only"))
    )
    by_link = make_transaction(org, stripe_payment_link_id="plink_b")
    db.session.commit()

    def best(session_id=None, payment_intent_id=None, link_id=None):
        found = matching._by_stored_ids(db.session, session_id, payment_intent_id, link_id)
        return found and (found.transaction.id, found.attempt_id, found.by)

    assert best(recovering["session_id"], "pi_record", "plink_a") == (*ours, "session")  # 0 over 1-5
    assert best("cs_only_on_a_transaction", "pi_record", "plink_b") == (
        by_session.id,
        None,
        "session",
    )  # 1 over 2
    assert best(None, "pi_record", "plink_a") == (*ours, "payment_intent")  # 2 over 3 and 5
    assert best(None, "pi_txn_and_fulfilment", "plink_b") == (
        by_intent.id,
        None,
        "payment_intent",
    )  # 3 over 4
    assert best("cs_unknown", "pi_fulfilment_only", "plink_b") == (
        fulfilled.id,
        None,
        "payment_intent",
    )  # 4 over 5
    assert best(link_id="plink_b") == (by_link.id, None, "payment_link")
    assert best("cs_unknown", "pi_unknown", "plink_unknown") is None
    assert best() is None


def test_the_fulfilment_row_is_a_unique_constraint_not_a_check(db, recovering):
    row = {
        "organization_id": recovering["org_id"],
        "transaction_id": recovering["txn_id"],
        "amount": 5000,
        "currency": "usd",
        "source": "test",
    }
    db.session.add(PaymentFulfilment(**row, stripe_checkout_session_id="cs_a"))
    db.session.commit()
    db.session.add(PaymentFulfilment(**row, stripe_checkout_session_id="cs_b"))

    with pytest.raises(Exception, match=r"(?i)unique"):
        db.session.commit()
    db.session.rollback()


def test_an_unpaid_completed_session_waits_for_async_payment(client, recovering):
    session = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_status="unpaid")

    assert deliver(client, se.event("checkout.session.completed", session)) == WebhookState.PROCESSED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
    assert reload(CheckoutSession, recovering["record_id"]).payment_status == "unpaid"

    failed = se.event("checkout.session.async_payment_failed", session)
    assert deliver(client, failed) == WebhookState.PROCESSED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING

    paid = dict(session, payment_status="paid", payment_intent="pi_async")
    assert (
        deliver(client, se.event("checkout.session.async_payment_succeeded", paid)) == WebhookState.PROCESSED
    )
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERED
    assert timeline_actions(recovering["txn_id"]) == [
        "stripe.checkout_session_awaiting_payment",
        "stripe.async_payment_failed",
        "stripe.payment_recovered",
    ]


def test_an_expired_session_is_noted_and_nothing_regresses(client, recovering):
    session = se.checkout_session(
        txn_of(recovering), id=recovering["session_id"], status="expired", payment_status="unpaid"
    )

    assert deliver(client, se.event("checkout.session.expired", session)) == WebhookState.PROCESSED

    assert reload(CheckoutSession, recovering["record_id"]).status == CheckoutStatus.EXPIRED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
    assert timeline_actions(recovering["txn_id"]) == ["stripe.checkout_session_expired"]


# --- out of order ----------------------------------------------------------------------------


def test_expired_after_completed_leaves_it_recovered(client, recovering):
    paid = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_intent="pi_1")
    deliver(client, se.event("checkout.session.completed", paid, created=int(time.time()) - 10))

    expired = dict(paid, status="expired", payment_status="unpaid")
    deliver(client, se.event("checkout.session.expired", expired))

    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERED
    assert reload(CheckoutSession, recovering["record_id"]).status == CheckoutStatus.COMPLETE


def test_payment_failed_after_succeeded_leaves_it_recovered(client, recovering):
    deliver(client, se.event("payment_intent.succeeded", se.payment_intent(txn_of(recovering), id="pi_both")))
    failed = se.payment_intent(
        txn_of(recovering),
        id="pi_both",
        status="requires_payment_method",
        failure=("card_declined", "insufficient_funds", "No money."),
    )

    assert deliver(client, se.event("payment_intent.payment_failed", failed)) == WebhookState.PROCESSED

    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERED
    assert timeline_actions(recovering["txn_id"]) == [
        "stripe.payment_succeeded",
        "stripe.payment_recovered",
        "stripe.payment_failed",
    ]


@pytest.mark.parametrize("order", ["intent first", "session first"])
def test_intent_succeeded_and_session_completed_in_either_order_fulfil_once(client, recovering, order):
    txn = txn_of(recovering)
    intent = se.event("payment_intent.succeeded", se.payment_intent(txn, id="pi_pair"))
    session = se.event(
        "checkout.session.completed",
        se.checkout_session(txn, id=recovering["session_id"], payment_intent="pi_pair"),
    )
    pair = [intent, session] if order == "intent first" else [session, intent]

    for evt in pair:
        assert deliver(client, evt) == WebhookState.PROCESSED

    fulfilment = _db.session.scalar(select(PaymentFulfilment))
    assert fulfilment is not None
    assert (fulfilment.stripe_payment_intent_id, fulfilment.stripe_checkout_session_id) == (
        "pi_pair",
        recovering["session_id"],
    )
    assert timeline_actions(recovering["txn_id"]).count("stripe.payment_recovered") == 1
    assert reload(CheckoutSession, recovering["record_id"]).status == CheckoutStatus.COMPLETE


def test_a_refund_before_the_payment_events_ends_refunded(client, recovering):
    refund = se.event("charge.refunded", se.charge(txn_of(recovering), payment_intent="pi_r", refunded=5000))
    # The charge names no transaction: only the PaymentIntent, known from our session record.
    record = reload(CheckoutSession, recovering["record_id"])
    record.stripe_payment_intent_id = "pi_r"
    _db.session.commit()

    assert deliver(client, refund) == WebhookState.PROCESSED
    session = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_intent="pi_r")
    assert deliver(client, se.event("checkout.session.completed", session)) == WebhookState.PROCESSED

    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.REFUNDED


def test_a_full_refund_of_a_recovered_transaction_and_a_partial_one(client, recovering):
    deliver(client, se.event("payment_intent.succeeded", se.payment_intent(txn_of(recovering), id="pi_ref")))

    partial = se.event(
        "charge.refunded", se.charge(txn_of(recovering), payment_intent="pi_ref", refunded=1000)
    )
    assert deliver(client, partial) == WebhookState.PROCESSED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERED

    full = se.event("charge.refunded", se.charge(txn_of(recovering), payment_intent="pi_ref", refunded=5000))
    assert deliver(client, full) == WebhookState.PROCESSED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.REFUNDED
    assert timeline_actions(recovering["txn_id"])[-2:] == ["stripe.partially_refunded", "stripe.refunded"]


def test_an_adaptive_pricing_session_counts_in_the_merchants_currency(client, recovering):
    session = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_intent="pi_fx")
    session.update(amount_total=4620, currency="eur")  # what the customer paid, in their currency
    session["currency_conversion"] = {"amount_total": 5000, "amount_subtotal": 5000, "source_currency": "usd"}

    assert deliver(client, se.event("checkout.session.completed", session)) == WebhookState.PROCESSED

    txn = reload(Transaction, recovering["txn_id"])
    assert (txn.status, txn.recovered_amount, txn.currency) == (TransactionStatus.RECOVERED, 5000, "usd")
    assert "stripe.payment_amount_differs" not in timeline_actions(recovering["txn_id"])


def test_a_partial_capture_recovers_with_what_arrived_and_says_so(client, recovering):
    intent = se.payment_intent(txn_of(recovering), id="pi_part")
    intent["amount_received"] = 1000  # of 5000 asked

    assert deliver(client, se.event("payment_intent.succeeded", intent)) == WebhookState.PROCESSED

    txn = reload(Transaction, recovering["txn_id"])
    assert (txn.status, txn.recovered_amount) == (TransactionStatus.RECOVERED, 1000)
    entry = _db.session.scalar(select(AuditEvent).where(AuditEvent.action == "stripe.payment_amount_differs"))
    assert entry.details["summary"] == "Paid $10.00, owed $50.00"


def test_a_succeeded_intent_with_nothing_received_recovers_nothing(client, recovering):
    intent = se.payment_intent(txn_of(recovering), id="pi_empty")
    intent["amount_received"] = 0

    assert deliver(client, se.event("payment_intent.succeeded", intent)) == WebhookState.PROCESSED

    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
    assert timeline_actions(recovering["txn_id"]) == ["stripe.payment_succeeded_empty"]


def test_refunding_a_second_payment_leaves_the_recovery_standing(client, db, recovering):
    """The customer paid twice (the app says "consider a refund"); the merchant refunds the second."""
    other = reload(CheckoutSession, recovering["record_id"])
    db.session.add(
        CheckoutSession(
            organization_id=other.organization_id,
            transaction_id=other.transaction_id,
            idempotency_key=se.new_id("key"),
            request_fingerprint="x",
            stripe_session_id="cs_second",
            status=CheckoutStatus.OPEN,
            amount=other.amount,
            currency=other.currency,
            expires_at=other.expires_at,
        )
    )
    db.session.commit()
    first = se.checkout_session(txn_of(recovering), id=recovering["session_id"], payment_intent="pi_first")
    second = se.checkout_session(txn_of(recovering), id="cs_second", payment_intent="pi_second")
    deliver(client, se.event("checkout.session.completed", first))
    deliver(client, se.event("checkout.session.completed", second))
    assert timeline_actions(recovering["txn_id"])[-1] == "stripe.duplicate_payment"

    refund = se.charge(txn_of(recovering), payment_intent="pi_second", refunded=5000)
    assert deliver(client, se.event("charge.refunded", refund)) == WebhookState.PROCESSED

    txn = reload(Transaction, recovering["txn_id"])
    assert txn.status == TransactionStatus.RECOVERED and txn.recovered_amount == 5000
    assert timeline_actions(recovering["txn_id"])[-2:] == [
        "stripe.duplicate_payment",
        "stripe.other_payment_refunded",
    ]
    # The first payment's own refund still ends it refunded.
    own = se.charge(txn_of(recovering), payment_intent="pi_first", refunded=5000)
    assert deliver(client, se.event("charge.refunded", own)) == WebhookState.PROCESSED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.REFUNDED


# --- payment intents ---------------------------------------------------------------------------


def test_a_failed_attempt_is_noted_with_its_codes(client, recovering):
    failed = se.payment_intent(
        txn_of(recovering),
        status="requires_payment_method",
        failure=("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    )

    assert deliver(client, se.event("payment_intent.payment_failed", failed)) == WebhookState.PROCESSED

    entry = _db.session.scalar(select(AuditEvent).where(AuditEvent.action == "stripe.payment_failed"))
    assert entry.details["failure_code"] == "card_declined"
    assert entry.details["decline_code"] == "insufficient_funds"
    assert "insufficient funds" in entry.details["summary"]
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING


@pytest.mark.parametrize("how", ["metadata", "connected account"])
def test_an_unknown_failed_payment_becomes_a_transaction_when_import_is_on(client, make_org, how):
    org = make_org(import_stripe_failures=True, stripe_account_id="acct_1Import")
    org_id = org.id
    intent = se.payment_intent(
        None,
        status="requires_payment_method",
        amount=4200,
        currency="eur",
        meta={"organization_id": str(org_id)} if how == "metadata" else {},
        failure=("card_declined", "expired_card", "Your card has expired."),
        receipt_email="Buyer@Example.com",
    )
    evt = se.event("payment_intent.payment_failed", intent)
    if how == "connected account":
        evt["account"] = "acct_1Import"

    assert deliver(client, evt) == WebhookState.PROCESSED

    txn = _db.session.scalar(select(Transaction).where(Transaction.organization_id == org_id))
    assert (txn.transaction_ref, txn.amount, txn.currency, txn.source) == (
        intent["id"],
        4200,
        "eur",
        "stripe",
    )
    assert (txn.failure_code, txn.customer_email, txn.status) == (
        "card_declined",
        "buyer@example.com",
        "failed",
    )
    assert txn.stripe_payment_intent_id == intent["id"]
    assert stored(evt["id"]).organization_id == org_id

    # A second failure of the same PaymentIntent is noted on it, not imported twice.
    assert deliver(client, se.event("payment_intent.payment_failed", intent)) == WebhookState.PROCESSED
    assert _db.session.scalar(select(func.count()).select_from(Transaction)) == 1


def test_a_connected_accounts_event_never_touches_another_organization(client, make_org, make_transaction):
    """Metadata is the merchant's to write; the connected account is Stripe's word for whose event it is."""
    account_org = make_org(import_stripe_failures=True, stripe_account_id="acct_1Owner")
    other = make_org(import_stripe_failures=True)
    other_id, account_org_id = other.id, account_org.id
    target = make_transaction(other, status=TransactionStatus.RECOVERING)
    target_id = target.id

    paid = se.event("payment_intent.succeeded", se.payment_intent(target))  # metadata names `other`
    paid["account"] = "acct_1Owner"
    assert deliver(client, paid) == WebhookState.UNMATCHED
    assert stored(paid["id"]).last_error.startswith("Refused: the event comes from connected account")
    assert reload(Transaction, target_id).status == TransactionStatus.RECOVERING

    failed = se.event(
        "payment_intent.payment_failed",
        se.payment_intent(
            None,
            status="requires_payment_method",
            meta={"organization_id": str(other_id)},
            failure=("card_declined", "generic_decline", "Declined."),
            receipt_email="someone@example.com",
        ),
    )
    failed["account"] = "acct_1Owner"
    assert deliver(client, failed) == WebhookState.UNMATCHED
    assert "connected account acct_1Owner is linked to organization" in stored(failed["id"]).last_error
    imported = _db.session.scalars(
        select(Transaction.organization_id).where(Transaction.source == "stripe")
    ).all()
    assert imported == [] and account_org_id != other_id


def test_a_failure_processed_after_its_success_imports_no_debt(client, make_org):
    """Stripe does not promise order: the success can be applied first, while nothing matches it yet."""
    org_id = make_org(import_stripe_failures=True).id
    meta = {"organization_id": str(org_id)}
    paid = se.payment_intent(None, id="pi_paid_later", meta=meta)
    failed = se.payment_intent(
        None,
        id="pi_paid_later",
        status="requires_payment_method",
        meta=meta,
        failure=("card_declined", "insufficient_funds", "Your card has insufficient funds."),
        receipt_email="buyer@example.com",
    )

    assert deliver(client, se.event("payment_intent.succeeded", paid)) == WebhookState.UNMATCHED
    assert deliver(client, se.event("payment_intent.payment_failed", failed)) == WebhookState.UNMATCHED

    assert _db.session.scalar(select(func.count()).select_from(Transaction)) == 0


def test_an_unknown_failed_payment_is_unmatched_when_import_is_off(client, make_org):
    org = make_org()
    intent = se.payment_intent(
        None,
        status="requires_payment_method",
        meta={"organization_id": str(org.id)},
        failure=("card_declined", "", ""),
    )

    assert deliver(client, se.event("payment_intent.payment_failed", intent)) == WebhookState.UNMATCHED

    assert _db.session.scalar(select(func.count()).select_from(Transaction)) == 0


def test_intent_succeeded_recovers_the_transaction_its_metadata_names(client, make_transaction):
    txn = make_transaction()
    txn_id = txn.id

    assert (
        deliver(client, se.event("payment_intent.succeeded", se.payment_intent(txn)))
        == WebhookState.PROCESSED
    )

    assert reload(Transaction, txn_id).status == TransactionStatus.RECOVERED


# --- unknown, unmatched, refused ------------------------------------------------------------


@pytest.mark.parametrize(
    ("app_config", "livemode"),
    [
        ({"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_SECRET_KEY": "sk_live_configured"}, False),
        ({"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_SECRET_KEY": "sk_test_configured"}, True),
    ],
)
def test_an_event_of_the_other_mode_than_our_key_is_kept_and_ignored(client, recovering, livemode):
    """Stripe sends connected accounts' test-mode events to live endpoints too."""
    evt = se.event(
        "payment_intent.payment_failed",
        se.declined(txn_of(recovering)),
    )
    evt["livemode"] = livemode

    assert deliver(client, evt) == WebhookState.IGNORED

    assert stored(evt["id"]).last_error.startswith(f"Ignored: a {'live' if livemode else 'test'}-mode event")
    assert timeline_actions(recovering["txn_id"]) == []


def test_an_unknown_type_is_stored_and_ignored(client):
    evt = se.event("customer.subscription.created", {"id": "sub_1", "object": "subscription"})

    assert deliver(client, evt) == WebhookState.IGNORED
    assert stored(evt["id"]).last_error is None


def test_an_event_about_nothing_we_know_is_unmatched_not_an_error(client, log_lines):
    evt = se.event("checkout.session.completed", se.checkout_session(None, meta={}))

    assert deliver(client, evt) == WebhookState.UNMATCHED
    assert stored(evt["id"]).last_error is None
    assert any(e["event"] == "stripe_webhook_unmatched" for e in log_lines())


def test_metadata_naming_another_organization_is_refused(client, recovering, make_org, log_lines):
    other = make_org()
    # The session is ours (org A) but its metadata claims organization B.
    session = se.checkout_session(
        txn_of(recovering),
        id=recovering["session_id"],
        meta=se.metadata(txn_of(recovering), organization_id=other.id),
    )
    evt = se.event("checkout.session.completed", session)

    assert deliver(client, evt) == WebhookState.UNMATCHED

    row = stored(evt["id"])
    assert row.last_error.startswith("Refused: metadata names organization")
    assert row.organization_id is None  # shown to neither organization
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
    assert _db.session.scalar(select(func.count()).select_from(PaymentFulfilment)) == 0
    assert any(e["event"] == "stripe_webhook_refused" for e in log_lines())


def test_a_session_of_one_organization_claimed_by_metadata_of_another_transaction(
    client, recovering, make_transaction
):
    stranger = make_transaction()  # another organization's transaction
    stranger_id = stranger.id
    session = se.checkout_session(stranger, id=recovering["session_id"])

    assert deliver(client, se.event("checkout.session.completed", session)) == WebhookState.UNMATCHED

    assert reload(Transaction, stranger_id).status == TransactionStatus.FAILED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING


# --- handler errors: recorded, rolled back, retried, replayed ---------------------------------------


def test_a_handler_error_is_recorded_rolled_back_retried_then_replayed_from_the_page(
    client, recovering, monkeypatch, rq_worker, signed_in
):
    real = handlers.HANDLERS["checkout.session.completed"]

    def broken(ctx: Context, obj: dict[str, Any]) -> str:
        real(ctx, obj)  # does everything, then fails: all of it must roll back
        raise RuntimeError("the database hiccuped")

    monkeypatch.setitem(handlers.HANDLERS, "checkout.session.completed", broken)
    evt = se.event(
        "checkout.session.completed", se.checkout_session(txn_of(recovering), id=recovering["session_id"])
    )
    assert se.post(client, evt).status_code == 200

    rq_worker()  # the real worker forks with the broken handler; Retry(max=2, interval=0) re-runs it

    row = stored(evt["id"])
    assert row.status == WebhookState.FAILED
    assert row.attempts == 3  # the first run and two retries
    assert row.last_error == "RuntimeError: the database hiccuped"
    assert "Traceback" in row.last_traceback and "broken" in row.last_traceback
    assert row.organization_id == recovering["org_id"]
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
    assert reload(Message, recovering["message_id"]).status == MessageStatus.QUEUED
    assert _db.session.scalar(select(func.count()).select_from(PaymentFulfilment)) == 0
    assert timeline_actions(recovering["txn_id"]) == []

    # Fixed; an admin presses "Process again".
    monkeypatch.setitem(handlers.HANDLERS, "checkout.session.completed", real)
    signed_in("admin", org=reload(Organization, recovering["org_id"]))
    page = client.get(f"/webhooks/{row.id}")
    assert "Process again" in page.get_data(as_text=True)
    assert "the database hiccuped" in page.get_data(as_text=True)
    response = client.post(f"/webhooks/{row.id}/process")
    assert response.status_code == 302
    assert stored(evt["id"]).status == WebhookState.PENDING
    rq_worker()

    row = stored(evt["id"])
    assert row.status == WebhookState.PROCESSED and row.attempts == 4 and row.last_error is None
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERED
    replays = _db.session.scalars(select(AuditEvent).where(AuditEvent.action == "webhook.replayed")).all()
    assert [r.target_id for r in replays] == [evt["id"]]


# --- a job takes the other pending events along -------------------------------------------------


def waiting_ids() -> list[str]:
    """The queue's jobs that still exist: a discarded job's id stays in the list until a worker pops it."""
    return [job.id for job in get_queue().jobs]


def unknown_events(count: int) -> list[dict[str, Any]]:
    return [
        se.event("customer.created", {"id": se.new_id("cus"), "object": "customer"}) for _ in range(count)
    ]


def test_a_batch_loads_the_transactions_its_events_name_in_one_query(client, make_org, make_transaction):
    org = make_org()
    txns = [make_transaction(org) for _ in range(4)]
    _db.session.commit()
    evts = [se.event("payment_intent.payment_failed", se.declined(txn)) for txn in txns]
    for evt in evts:
        assert se.post(client, evt).status_code == 200
    _db.session.remove()  # the job starts with nothing loaded, as a worker does
    statements: list[str] = []
    listen = sa_event.listens_for(_db.engine, "before_cursor_execute")

    @listen
    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.replace('"', "").split()))

    try:
        run_job(jobs.process_webhook_event, evts[0]["id"])
    finally:
        sa_event.remove(_db.engine, "before_cursor_execute", note)

    assert {stored(evt["id"]).status for evt in evts} == {WebhookState.PROCESSED}
    by_id = [s for s in statements if s.startswith("SELECT transaction.") and "WHERE transaction.id =" in s]
    by_ids = [s for s in statements if s.startswith("SELECT transaction.") and "transaction.id IN" in s]
    assert len(by_ids) == 1  # the three taken along, at once
    assert len(by_id) == 1  # the job's own event, before it took the others along


def test_one_job_applies_the_waiting_events_and_removes_their_jobs(client):
    evts = unknown_events(5)
    for evt in evts:
        assert se.post(client, evt).status_code == 200
    assert len(queued_ids()) == 5

    run_job(jobs.process_webhook_event, evts[0]["id"])

    assert [row.status for row in events()] == [WebhookState.IGNORED] * 5
    # Only the job run here by hand is left (RQ takes a job off the queue as it starts it).
    assert waiting_ids() == [jobs.job_id(evts[0]["id"])]


def test_a_real_worker_drains_a_burst_and_skips_the_removed_jobs(client, rq_worker):
    evts = unknown_events(6)
    for evt in evts:
        assert se.post(client, evt).status_code == 200

    rq_worker()

    assert [row.status for row in events()] == [WebhookState.IGNORED] * 6
    assert get_queue().count == 0
    assert get_queue().failed_job_registry.count == 0
    # One job ran and applied all six; the other five were removed before they ran.
    assert get_queue().finished_job_registry.get_job_ids() == [jobs.job_id(evts[0]["id"])]


@pytest.mark.parametrize("app_config", [{"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_WEBHOOK_BATCH_SIZE": 1}])
def test_a_batch_of_one_applies_only_its_own_event(client):
    evts = unknown_events(3)
    for evt in evts:
        assert se.post(client, evt).status_code == 200

    run_job(jobs.process_webhook_event, evts[1]["id"])

    assert [row.status for row in events()] == [
        WebhookState.PENDING,
        WebhookState.IGNORED,
        WebhookState.PENDING,
    ]
    assert len(queued_ids()) == 3  # RQ removes a job from the queue as it starts it; run_job does not


def test_a_taken_along_event_that_fails_keeps_its_job_and_fails_nobody_else(client, monkeypatch, log_lines):
    def broken(ctx: Context, obj: dict[str, Any]) -> str:
        raise RuntimeError("this one is broken")

    monkeypatch.setitem(handlers.HANDLERS, "invoice.created", broken)
    first, second = unknown_events(2)
    failing = se.event("invoice.created", {"id": se.new_id("in"), "object": "invoice"})
    for evt in (first, failing, second):
        assert se.post(client, evt).status_code == 200

    run_job(jobs.process_webhook_event, first["id"])

    assert stored(first["id"]).status == WebhookState.IGNORED
    assert stored(second["id"]).status == WebhookState.IGNORED
    # The batch ran straight through, hit the failure, and was applied again event by event.
    [isolating] = [e for e in log_lines() if e["event"] == "stripe_webhook_take_along_isolating"]
    assert isolating["failed_event_id"] == failing["id"]
    # Rolled back and left pending, with its own job still waiting...
    assert stored(failing["id"]).status == WebhookState.PENDING
    assert waiting_ids() == [jobs.job_id(first["id"]), jobs.job_id(failing["id"])]
    # ...which records the failure and raises, so RQ retries it with backoff.
    with pytest.raises(RuntimeError, match="this one is broken"):
        run_job(jobs.process_webhook_event, failing["id"])
    row = stored(failing["id"])
    assert row.status == WebhookState.FAILED and row.last_error == "RuntimeError: this one is broken"


def test_a_failing_event_without_a_job_is_left_for_the_sweeper(client, monkeypatch, app):
    # Redis was down when it arrived: stored, no job. A take-along must not fail it for good.
    def broken(ctx: Context, obj: dict[str, Any]) -> str:
        raise RuntimeError("this one is broken")

    monkeypatch.setitem(handlers.HANDLERS, "invoice.created", broken)
    failing = se.event("invoice.created", {"id": se.new_id("in"), "object": "invoice"})
    assert se.post(client, failing).status_code == 200
    Redis.from_url(app.config["REDIS_URL"]).flushdb()
    [mine] = unknown_events(1)
    assert se.post(client, mine).status_code == 200

    run_job(jobs.process_webhook_event, mine["id"])

    assert stored(failing["id"]).status == WebhookState.PENDING
    # A minute later the sweeper queues its job, which fails and retries it as usual.
    _db.session.execute(
        WebhookEvent.__table__.update().values(received_at=utcnow() - timedelta(minutes=5))  # type: ignore[attr-defined]
    )
    _db.session.commit()
    assert run_job(jobs.sweep_webhook_events) == {"pending": 1, "enqueued": 1}
    assert jobs.job_id(failing["id"]) in waiting_ids()


def test_a_taken_along_event_locked_elsewhere_is_skipped(app, client, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite serialises writers anyway")
    mine, busy = unknown_events(2)
    for evt in (mine, busy):
        assert se.post(client, evt).status_code == 200
    other = _db.engine.connect()  # another worker, in the middle of applying `busy`
    other.execute(select(WebhookEvent).where(WebhookEvent.stripe_event_id == busy["id"]).with_for_update())
    try:
        began = time.monotonic()
        run_job(jobs.process_webhook_event, mine["id"])
        assert time.monotonic() - began < 2  # did not wait for the lock
    finally:
        other.rollback()
        other.close()

    assert stored(mine["id"]).status == WebhookState.IGNORED
    assert stored(busy["id"]).status == WebhookState.PENDING
    assert jobs.job_id(busy["id"]) in queued_ids()  # left to whoever holds it, or its own job


def test_a_job_whose_event_is_held_elsewhere_works_on_others_first(app, client, database_url):
    """Workers must not queue behind each other's batches: that drained no faster with two than one."""
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite serialises writers anyway")
    mine, waiting = unknown_events(2)
    for evt in (mine, waiting):
        assert se.post(client, evt).status_code == 200
    other = _db.engine.connect()  # another worker's batch holds `mine`, then gives it up unapplied
    other.execute(select(WebhookEvent).where(WebhookEvent.stripe_event_id == mine["id"]).with_for_update())
    release = threading.Timer(1.0, other.rollback)
    release.start()
    try:
        assert run_job(jobs.process_webhook_event, mine["id"]) == WebhookState.IGNORED
    finally:
        release.join()
        other.close()

    # It applied the waiting event first, then its own once the other batch let go of it.
    assert stored(waiting["id"]).status == stored(mine["id"]).status == WebhookState.IGNORED
    assert stored(waiting["id"]).processed_at < stored(mine["id"]).processed_at
    assert stored(mine["id"]).attempts == 1


# --- the admin pages ----------------------------------------------------------------------------


def test_admins_see_their_events_filtered_by_state_and_type(client, signed_in, recovering, make_org):
    paid = se.event(
        "checkout.session.completed", se.checkout_session(txn_of(recovering), id=recovering["session_id"])
    )
    failed = se.event(
        "payment_intent.payment_failed",
        se.payment_intent(txn_of(recovering), status="requires_payment_method"),
    )
    deliver(client, paid)
    deliver(client, failed)
    other_org = make_org(import_stripe_failures=True)
    foreign = se.event(
        "payment_intent.payment_failed",
        se.payment_intent(
            None, status="requires_payment_method", meta={"organization_id": str(other_org.id)}
        ),
    )
    deliver(client, foreign)
    signed_in("admin", org=reload(Organization, recovering["org_id"]))

    page = client.get("/webhooks").get_data(as_text=True)
    assert paid["id"] in page and failed["id"] in page and foreign["id"] not in page

    page = client.get("/webhooks?type=payment_intent.payment_failed").get_data(as_text=True)
    assert failed["id"] in page and paid["id"] not in page
    page = client.get("/webhooks?state=failed").get_data(as_text=True)
    assert paid["id"] not in page and "No events match" in page
    page = client.get(f"/webhooks?q={recovering['session_id']}").get_data(as_text=True)
    assert paid["id"] in page and failed["id"] not in page

    detail = client.get(f"/webhooks/{stored(paid['id']).id}").get_data(as_text=True)
    assert "stripe.payment_recovered" in detail  # the timeline entry it caused
    assert recovering["session_id"] in detail  # the raw payload
    assert "Process again" not in detail
    refused = client.post(f"/webhooks/{stored(paid['id']).id}/process")
    assert refused.status_code == 303  # refused (only failed or unmatched events), flashed, sent back
    assert stored(paid["id"]).status == WebhookState.PROCESSED

    assert client.get(f"/webhooks/{stored(foreign['id']).id}").status_code == 404

    # The transaction's own timeline links the event.
    txn_page = client.get(f"/transactions/{recovering['txn_id']}").get_data(as_text=True)
    assert f"/webhooks/{stored(paid['id']).id}" in txn_page


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_the_events_pages_are_for_admins(client, signed_in, role):
    signed_in(role)

    assert client.get("/webhooks").status_code == 403
    assert client.post("/webhooks/reconcile").status_code == 403
    assert client.post("/webhooks/settings", data={"import_stripe_failures": "y"}).status_code == 403


def test_reconcile_now_queues_the_job_and_is_audited(client, signed_in):
    user = signed_in("admin")

    response = client.post("/webhooks/reconcile")

    assert response.status_code == 302
    [job] = get_queue().jobs
    assert job.func_name.endswith("reconcile_checkout_sessions") and job.args == (user.organization_id,)
    assert _db.session.scalar(
        select(AuditEvent.action).where(AuditEvent.action == "webhook.reconcile_requested")
    )


def test_owners_switch_on_the_import_of_stripe_failures(client, signed_in):
    user = signed_in("owner")
    org_id = user.organization_id

    response = client.post("/webhooks/settings", data={"import_stripe_failures": "y"})

    assert response.status_code == 302
    assert reload(Organization, org_id).import_stripe_failures is True
    entry = _db.session.scalar(
        select(AuditEvent).where(AuditEvent.action == "organization.stripe_settings_changed")
    )
    assert entry.details["changes"] == {"import_stripe_failures": [False, True]}


@pytest.mark.parametrize("role", ["admin", "owner"])
def test_the_dashboard_cannot_link_a_stripe_account(client, signed_in, role):
    # The account's failed payments, with its customers' details, would become
    # this organization's: typing someone else's acct_ id must not claim it.
    org_id = signed_in(role).organization_id

    client.post(
        "/webhooks/settings", data={"import_stripe_failures": "y", "stripe_account_id": "acct_1Theirs"}
    )

    assert reload(Organization, org_id).stripe_account_id is None
    page = client.get("/webhooks").get_data(as_text=True)
    assert 'name="stripe_account_id"' not in page
    assert "flask link-stripe-account" in page


def test_the_events_page_shows_the_linked_account(client, signed_in):
    org_id = signed_in("admin").organization_id
    org = reload(Organization, org_id)
    org.stripe_account_id = "acct_1Linked"
    _db.session.commit()

    assert "<code>acct_1Linked</code>" in client.get("/webhooks").get_data(as_text=True)


def test_a_transaction_created_from_stripe_is_marked_so(client, make_org):
    org = make_org(import_stripe_failures=True)
    intent = se.payment_intent(None, status="requires_payment_method", meta={"organization_id": str(org.id)})
    deliver(client, se.event("payment_intent.payment_failed", intent))

    txn = _db.session.scalar(select(Transaction))
    assert txn.source == TransactionSource.STRIPE
    assert set(timeline_actions(txn.id)) == {"transaction.created", "stripe.payment_failed"}


@pytest.mark.parametrize("app_config", [{"STRIPE_TIMEOUT_SECONDS": 10, "STRIPE_MAX_NETWORK_RETRIES": 2}])
def test_stripe_job_timeouts_cover_every_retry(app):
    from recovery.payments.gateway import StripeSettings
    from recovery.webhooks import jobs

    worst = StripeSettings.from_config(app.config).worst_case_seconds
    assert worst == 3 * 10 + 2 * 2  # three tries of 10 s, and stripe-python's waits between them
    assert jobs.stripe_job_timeout(1) > worst
    assert jobs.stripe_job_timeout(jobs.CLOSE_CALLS) > jobs.CLOSE_CALLS * worst
    job = jobs.enqueue_processing("evt_timeout_check")
    assert job.timeout >= jobs.stripe_job_timeout(1)
