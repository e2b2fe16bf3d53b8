"""Signed webhook bodies that no retry could ever store (issue 15, item 7).

Each once answered 500 or 503, which Stripe retries for three days, or was
cut short and called "invalid signature"; now each is a 400 or 413 and nothing
is stored. Bodies are signed with stripe-python's own helper.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import stripe
from sqlalchemy import select

from recovery.extensions import db as _db
from recovery.models import Transaction, WebhookEvent
from recovery.webhooks import jobs
from tests.conftest import base_config
from tests.fixtures import stripe_events as se
from tests.test_bad_input import gunicorn_serving

MAX_BYTES = 1024 * 1024  # STRIPE_WEBHOOK_MAX_BYTES's default


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"STRIPE_WEBHOOK_SECRET": se.SECRET}


def stored_events() -> list[WebhookEvent]:
    _db.session.expire_all()
    return list(_db.session.scalars(select(WebhookEvent)))


def test_a_signed_body_nested_5000_deep_is_400_and_nothing_is_stored(client, db):
    payload = '{"a": ' * 5000 + "1" + "}" * 5000

    response = se.post(client, payload)

    assert response.status_code == 400
    assert response.get_json()["error"] == {
        "type": "invalid_request",
        "message": "invalid body: nested too deeply",
    }
    assert stored_events() == []


def _set(event: dict[str, Any], path: str, value: str) -> None:
    *parents, last = path.split(".")
    target = event
    for key in parents:
        target = target[key]
    target[last] = value


BAD_IDS = [
    # The event id's own check ends its pattern with `$`, which lets a final newline through.
    ("id", "evt_1NewLine\n"),
    *[
        (path, value)
        for path in ("type", "data.object.id", "account", "api_version")
        for value in ("x\x00y", "x\x1by", "x\x9by", "x\ud800y")  # NUL, ESC, C1 CSI, a lone surrogate
    ],
]


@pytest.mark.parametrize(("path", "value"), BAD_IDS)
def test_control_characters_in_a_stored_id_are_400_and_nothing_is_stored(client, db, path, value):
    event = se.event("checkout.session.completed", se.checkout_session(None))
    event["account"] = "acct_1Fine"
    _set(event, path, value)

    response = se.post(client, json.dumps(event))  # escapes them, as Stripe's JSON would

    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["message"] == f"invalid body: {path} holds control characters"
    assert stored_events() == []


def test_control_characters_elsewhere_are_stripes_and_stored_as_sent(client, db):
    """Only the fields that become columns are judged; the payload is kept whole as JSON."""
    event = se.event("checkout.session.completed", se.checkout_session(None))
    event["data"]["object"]["metadata"] = {"note": "a\x00b\x1b"}

    response = se.post(client, json.dumps(event))

    assert response.status_code == 200, response.get_json()
    [stored] = stored_events()
    assert stored.payload["data"]["object"]["metadata"] == {"note": "a\x00b\x1b"}


def test_a_failed_payment_imported_from_stripe_loses_its_deceptive_characters(client, db, make_org):
    """Stripe's data cannot be refused: the characters are removed, the failure is still imported."""
    org = make_org(import_stripe_failures=True)
    org_id = org.id
    intent = se.declined(None, meta={"organization_id": str(org_id)}, receipt_email="buyer@example.com")
    intent["last_payment_error"]["payment_method"]["billing_details"]["name"] = "abc\u202egnp.exe\u200b"
    event = se.event("payment_intent.payment_failed", intent)

    assert se.post(client, event).status_code == 200
    jobs.process_webhook_event.__wrapped__(event["id"])
    _db.session.remove()

    imported = _db.session.scalar(select(Transaction).where(Transaction.organization_id == org_id))
    assert imported is not None and imported.customer_name == "abcgnp.exe"


# --- a chunked body, over real HTTP -----------------------------------------------------------------


@pytest.fixture
def served(app, database_url: str, redis_url: str, tmp_path) -> Iterator[int]:
    """gunicorn with the repository's config, on the test's database (migrated by `app`)."""
    config = base_config(database_url, redis_url, STRIPE_WEBHOOK_SECRET=se.SECRET)
    with gunicorn_serving(config, tmp_path / "gunicorn.log") as port:
        yield port


def post_chunked(port: int, payload: bytes, chunk: int = 64 * 1024) -> tuple[int, dict[str, Any]]:
    """POST with `Transfer-Encoding: chunked`, sending from a thread while the answer is read.

    The server may answer (413) and close before it has read everything; the
    sender then meets a reset, which is the server's right, not a failure.
    """
    header = stripe.WebhookSignature.generate_signature_header(payload.decode(), se.SECRET)
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST {se.URL} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {header}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()

    def send() -> None:
        try:
            sock.sendall(head)
            for start in range(0, len(payload), chunk):
                part = payload[start : start + chunk]
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass

    sender = threading.Thread(target=send)
    sender.start()
    try:
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())
    finally:
        sender.join(timeout=30)
        sock.close()


def padded_event(size: int) -> bytes:
    """A well-formed event whose JSON is `size` bytes, padded in its metadata."""
    event = se.event("checkout.session.completed", se.checkout_session(None))
    event["data"]["object"]["metadata"] = {"padding": ""}
    base = len(json.dumps(event).encode())
    event["data"]["object"]["metadata"]["padding"] = "x" * (size - base)
    payload = json.dumps(event).encode()
    assert len(payload) == size
    return payload


def test_a_2_mb_chunked_body_is_413_not_an_invalid_signature(served, db):
    status, body = post_chunked(served, padded_event(2 * 1024 * 1024))

    assert status == 413
    assert body["error"]["type"] == "payload_too_large"
    assert stored_events() == []


@pytest.mark.parametrize("size", [MAX_BYTES, MAX_BYTES + 1])
def test_a_chunked_body_at_the_limit_is_taken_and_one_byte_more_is_not(served, db, size):
    status, body = post_chunked(served, padded_event(size))

    if size == MAX_BYTES:
        assert (status, body) == (200, {"received": True, "duplicate": False})
        deadline = time.monotonic() + 5
        while not stored_events() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(stored_events()) == 1
    else:
        assert status == 413
        assert stored_events() == []
