"""Structured logs: JSON lines, one event name per operation, the request id on each."""

from __future__ import annotations

import io
import json
import logging

import pytest

from tests.conftest import login


@pytest.fixture
def log_lines(app):
    """Read what the app's JSON log handler writes, line by line."""
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


def test_request_lines_are_json_with_the_request_id(client, make_user, log_lines) -> None:
    user = make_user()
    response = login(client, user)
    request_id = response.headers["X-Request-ID"]
    lines = log_lines()
    events = {line["event"]: line for line in lines}
    assert events["login_succeeded"]["request_id"] == request_id
    assert events["login_succeeded"]["user_id"] == user.id
    assert events["request_finished"]["request_id"] == request_id
    assert events["request_finished"]["status"] == 302
    assert all("timestamp" in line and "level" in line for line in lines)


def test_a_valid_incoming_request_id_is_kept_and_a_bad_one_replaced(client, log_lines) -> None:
    kept = client.get("/healthz", headers={"X-Request-ID": "abc123def456"})
    assert kept.headers["X-Request-ID"] == "abc123def456"
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert replaced.headers["X-Request-ID"] != "bad id <script>"
    assert len(replaced.headers["X-Request-ID"]) == 32


def test_failed_sign_in_is_logged_without_the_password(client, make_user, log_lines) -> None:
    user = make_user()
    client.post("/login", data={"email": user.email, "password": "wrong-password-123"})
    lines = log_lines()
    failed = [line for line in lines if line["event"] == "login_failed"]
    assert failed and failed[0]["email"] == user.email
    assert "wrong-password-123" not in json.dumps(lines)


def test_a_customers_link_token_never_reaches_the_log(client, db, make_transaction, log_lines) -> None:
    """The token is the customer's only credential for their pay and unsubscribe pages."""
    from recovery.audit import Actor
    from recovery.models import utcnow
    from recovery.recoveries import lifecycle

    transaction = make_transaction()
    attempt = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id), now=utcnow()
    ).attempt
    db.session.commit()
    token = attempt.token

    client.get(f"/pay/{token}")
    client.get(f"/pay/{token}/unsubscribe")
    client.get(f"/pay/cancel?t={token}")

    lines = log_lines()
    paths = [line["path"] for line in lines if line["event"] == "request_finished"]
    assert paths == ["/pay/<token>", "/pay/<token>/unsubscribe", "/pay/cancel"]
    assert token not in json.dumps(lines)
