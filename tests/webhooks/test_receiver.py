"""Receiving Stripe webhooks: signatures, storing before anything else, answering, Redis down.

Signatures come from stripe-python's own `WebhookSignature.generate_signature_header`.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from redis import Redis
from sqlalchemy.exc import OperationalError

from recovery import create_app
from recovery.config import ConfigError
from recovery.extensions import db as _db
from recovery.models import (
    Transaction,
    TransactionStatus,
    WebhookState,
    utcnow,
)
from recovery.queue import get_queue
from recovery.webhooks import jobs, receiving
from tests.conftest import base_config
from tests.fixtures import stripe_events as se
from tests.fixtures.webhooks import (
    events,
    queued_ids,
    reload,
    run_job,
    stored,
    txn_of,
)


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_WEBHOOK_RETRY_SECONDS": "0,0"}


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
