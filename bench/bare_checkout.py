"""The floor for the checkout benchmark: the create's own SQL, and nothing else.

A WSGI app (no Flask, no ORM) that does the database work a crash-safe
Checkout Session create cannot do without, on one psycopg connection per
worker, each statement one round trip:

1. find the token by hash, the transaction (with its organization's name), a
   reusable open session and the Stripe Customer; save the reservation and
   commit it asynchronously (what must exist before Stripe is called);
2. (Stripe's two calls, which the benchmark excludes anyway, are not made)
3. save the Customer, fill in the session and the transaction, write the
   audit event, and commit durably; answer with the session's JSON.

`gunicorn bench.bare_checkout:app` with BENCH_DATABASE_URL set; `bench.checkout_create
--floor` starts it and sends it the same requests it sends the app. `flask_app`
is the same work in one view of a bare Flask app (no extensions, no hooks):
what Flask's own request handling adds to the floor. `pipelined_app` is the
same SQL in three round trips instead of twelve (psycopg's pipeline mode: the
four reads, then the reservation with its commit, then the four writes with
theirs): the least any implementation of this SQL can wait on the database.
`minimal_app` gives up the reservation: the same reads, then one durable
commit of everything after Stripe (no crash safety between the two), the
least SQL that still records what the issue asks for. `http_app` answers
the same requests with no SQL at all: what loopback HTTP, gunicorn and the
benchmark's own client cost before any work is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from flask import Flask, Response, request

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/recovery_bench")

_conn: psycopg.Connection[Any] | None = None

FIND_TOKEN = "SELECT id, organization_id, role, revoked_at, expires_at FROM api_token WHERE token_hash = %s"
FIND_TRANSACTION = (
    "SELECT t.id, t.amount, t.currency, t.customer_email, t.status, o.name FROM transaction t "
    "JOIN organization o ON o.id = t.organization_id WHERE t.organization_id = %s AND t.transaction_ref = %s"
)
FIND_REUSABLE = (
    "SELECT id, request_fingerprint, expires_at FROM checkout_session WHERE transaction_id = %s "
    "AND status IN ('pending', 'open') AND attempt_id IS NULL ORDER BY created_at DESC"
)
FIND_CUSTOMER = "SELECT stripe_customer_id FROM stripe_customer WHERE organization_id = %s AND email = %s"
# The same reads with the token's hash and the reference as their only inputs, so
# that all four can be sent before the first answer is back.
TOKEN_ORG = "(SELECT organization_id FROM api_token WHERE token_hash = %(hash)s)"
FIND_TRANSACTION_PIPELINED = FIND_TRANSACTION.replace(
    "t.organization_id = %s AND t.transaction_ref = %s",
    f"t.organization_id = {TOKEN_ORG} AND t.transaction_ref = %(ref)s",
)
TRANSACTION_OF_REF = (
    f"SELECT id FROM transaction WHERE organization_id = {TOKEN_ORG} AND transaction_ref = %(ref)s"
)
FIND_REUSABLE_PIPELINED = FIND_REUSABLE.replace(
    "transaction_id = %s", f"transaction_id = ({TRANSACTION_OF_REF})"
)
FIND_CUSTOMER_PIPELINED = (
    "SELECT c.stripe_customer_id FROM stripe_customer c JOIN transaction t "
    "ON c.organization_id = t.organization_id AND c.email = lower(t.customer_email) "
    f"WHERE t.organization_id = {TOKEN_ORG} AND t.transaction_ref = %(ref)s"
)
INSERT_RESERVATION = (
    "INSERT INTO checkout_session (organization_id, transaction_id, idempotency_key, "
    "request_fingerprint, status, amount, currency, customer_email, expires_at, created_at, "
    "updated_at) VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s, %s, %s, %s) RETURNING id"
)
INSERT_CUSTOMER = (
    "INSERT INTO stripe_customer (organization_id, email, stripe_customer_id, created_at) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (organization_id, email) DO NOTHING"
)
FILL_SESSION = (
    "UPDATE checkout_session SET stripe_session_id = %s, url = %s, status = 'open', "
    "payment_status = 'unpaid', updated_at = %s WHERE id = %s"
)
FILL_TRANSACTION = (
    "UPDATE transaction SET stripe_checkout_session_id = %s, checkout_url = %s, "
    "checkout_expires_at = %s, stripe_customer_id = %s, updated_at = %s WHERE id = %s"
)
INSERT_AUDIT = (
    "INSERT INTO audit_event (organization_id, actor_api_token_id, actor_label, action, "
    "transaction_id, target_type, target_id, details, created_at) "
    "VALUES (%s, %s, 'bench', 'stripe.checkout_session_created', %s, 'checkout_session', %s, %s, %s)"
)


INSERT_OPEN_SESSION = (
    "INSERT INTO checkout_session (organization_id, transaction_id, idempotency_key, "
    "request_fingerprint, status, amount, currency, customer_email, expires_at, stripe_session_id, "
    "url, payment_status, created_at, updated_at) "
    "VALUES (%s, %s, %s, %s, 'open', %s, %s, %s, %s, %s, %s, 'unpaid', %s, %s)"
)


def _connection() -> psycopg.Connection[Any]:
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg.connect(DATABASE_URL.replace("postgresql+psycopg://", "postgresql://"))
    return _conn


def _create(conn: psycopg.Connection[Any], raw_token: str, body: dict[str, Any]) -> dict[str, Any]:
    now = datetime.now(UTC)
    token_hash = hashlib.sha256(raw_token.encode()).hexdigest()
    token = conn.execute(FIND_TOKEN, (token_hash,)).fetchone()
    assert token is not None
    org_id = token[1]
    txn = conn.execute(FIND_TRANSACTION, (org_id, body["transaction_ref"])).fetchone()
    assert txn is not None
    txn_id, amount, currency, email = txn[0], txn[1], txn[2], txn[3].lower()
    conn.execute(FIND_REUSABLE, (txn_id,)).fetchall()
    customer = conn.execute(FIND_CUSTOMER, (org_id, email)).fetchone()
    conn.execute("SET LOCAL synchronous_commit = off")
    key = f"recovery-org{org_id}-txn{txn_id}-checkout-{uuid.uuid4().hex}"
    expires_at = now + timedelta(hours=24)
    reservation_id = conn.execute(
        INSERT_RESERVATION, (org_id, txn_id, key, "f" * 32, amount, currency, email, expires_at, now, now)
    ).fetchone()[0]  # type: ignore[index]
    conn.commit()
    customer_id = customer[0] if customer else f"cus_{uuid.uuid4().hex[:14]}"
    return _finish(conn, now, token[0], org_id, txn_id, reservation_id, customer_id, customer is None, email)


def _finish(
    conn: psycopg.Connection[Any],
    now: datetime,
    token_id: int,
    org_id: int,
    txn_id: int,
    reservation_id: int,
    customer_id: str,
    new_customer: bool,
    email: str,
) -> dict[str, Any]:
    """After Stripe: save the Customer, fill in session and transaction, audit, commit durably."""
    session_id = f"cs_test_{uuid.uuid4().hex}"
    url = f"http://127.0.0.1:18111/c/pay/{session_id}"
    expires_at = now + timedelta(hours=24)
    if new_customer:
        conn.execute(INSERT_CUSTOMER, (org_id, email, customer_id, now))
    conn.execute(FILL_SESSION, (session_id, url, now, reservation_id))
    conn.execute(FILL_TRANSACTION, (session_id, url, expires_at, customer_id, now, txn_id))
    conn.execute(
        INSERT_AUDIT,
        (org_id, token_id, txn_id, session_id, json.dumps({"session_id": session_id, "url": url}), now),
    )
    conn.commit()
    return {
        "session_id": session_id,
        "payment_intent_id": None,
        "checkout_url": url,
        "expires_at": expires_at.isoformat(),
    }


def _create_pipelined(conn: psycopg.Connection[Any], raw_token: str, body: dict[str, Any]) -> dict[str, Any]:
    """`_create` in three round trips: psycopg sends each block's statements without waiting."""
    now = datetime.now(UTC)
    inputs = {"hash": hashlib.sha256(raw_token.encode()).hexdigest(), "ref": body["transaction_ref"]}
    with conn.pipeline():
        token_rows = conn.execute(FIND_TOKEN.replace("%s", "%(hash)s"), inputs)
        txn_rows = conn.execute(FIND_TRANSACTION_PIPELINED, inputs)
        reusable_rows = conn.execute(FIND_REUSABLE_PIPELINED, inputs)
        customer_rows = conn.execute(FIND_CUSTOMER_PIPELINED, inputs)
    token, txn = token_rows.fetchone(), txn_rows.fetchone()
    assert token is not None and txn is not None
    reusable_rows.fetchall()
    customer = customer_rows.fetchone()
    org_id, txn_id, amount, currency, email = token[1], txn[0], txn[1], txn[2], txn[3].lower()
    key = f"recovery-org{org_id}-txn{txn_id}-checkout-{uuid.uuid4().hex}"
    with conn.pipeline():
        conn.execute("SET LOCAL synchronous_commit = off")
        reservation = conn.execute(
            INSERT_RESERVATION,
            (org_id, txn_id, key, "f" * 32, amount, currency, email, now + timedelta(hours=24), now, now),
        )
        conn.commit()
    reservation_id = reservation.fetchone()[0]  # type: ignore[index]
    customer_id = customer[0] if customer else f"cus_{uuid.uuid4().hex[:14]}"
    with conn.pipeline():
        return _finish(
            conn, now, token[0], org_id, txn_id, reservation_id, customer_id, customer is None, email
        )


def _wsgi(create: Callable[..., dict[str, Any]]) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"POST a create here"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length)) if length else {}
        raw_token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")[2]
        conn = _connection()
        try:
            answer = create(conn, raw_token, body)
        except Exception:
            conn.rollback()
            raise
        start_response(
            "201 Created",
            [("Content-Type", "application/json"), ("Server-Timing", "app;dur=0, stripe;dur=0")],
        )
        return [json.dumps(answer).encode()]

    return app


def minimal_create(conn: Any, raw_token: str, body: dict[str, Any]) -> dict[str, Any]:
    """The least SQL that still finds, checks and records everything, with one commit."""
    now = datetime.now(UTC)
    token = conn.execute(FIND_TOKEN, (hashlib.sha256(raw_token.encode()).hexdigest(),)).fetchone()
    org_id = token[1]
    txn = conn.execute(FIND_TRANSACTION, (org_id, body["transaction_ref"])).fetchone()
    txn_id, amount, currency, email = txn[0], txn[1], txn[2], txn[3].lower()
    conn.execute(FIND_REUSABLE, (txn_id,)).fetchall()
    customer = conn.execute(FIND_CUSTOMER, (org_id, email)).fetchone()
    customer_id = customer[0] if customer else f"cus_{uuid.uuid4().hex[:14]}"
    session_id = f"cs_test_{uuid.uuid4().hex}"
    url = f"http://127.0.0.1:18111/c/pay/{session_id}"
    expires_at = now + timedelta(hours=24)
    if customer is None:
        conn.execute(INSERT_CUSTOMER, (org_id, email, customer_id, now))
    key = f"recovery-org{org_id}-txn{txn_id}-checkout-{uuid.uuid4().hex}"
    conn.execute(
        INSERT_OPEN_SESSION,
        (org_id, txn_id, key, "f" * 32, amount, currency, email, expires_at, session_id, url, now, now),
    )
    conn.execute(FILL_TRANSACTION, (session_id, url, expires_at, customer_id, now, txn_id))
    conn.execute(
        INSERT_AUDIT,
        (org_id, token[0], txn_id, session_id, json.dumps({"session_id": session_id, "url": url}), now),
    )
    conn.commit()
    return {"session_id": session_id, "checkout_url": url, "expires_at": expires_at.isoformat()}


def _canned(conn: psycopg.Connection[Any], raw_token: str, body: dict[str, Any]) -> dict[str, Any]:
    """No SQL at all: an answer of the same shape, for what HTTP and gunicorn alone cost."""
    session_id = f"cs_test_{uuid.uuid4().hex}"
    return {
        "session_id": session_id,
        "payment_intent_id": None,
        "checkout_url": f"http://127.0.0.1:18111/c/pay/{session_id}",
        "expires_at": (datetime.now(UTC) + timedelta(hours=24)).isoformat(),
    }


app = _wsgi(_create)
pipelined_app = _wsgi(_create_pipelined)
minimal_app = _wsgi(minimal_create)
http_app = _wsgi(_canned)
flask_app = Flask(__name__)


@flask_app.post("/v1/payments/stripe/checkout-sessions")
def create() -> tuple[Response, int]:
    conn = _connection()
    try:
        answer = _create(conn, request.headers["Authorization"].partition(" ")[2], request.get_json())
    except Exception:
        conn.rollback()
        raise
    response = Response(json.dumps(answer), mimetype="application/json")
    response.headers["Server-Timing"] = "app;dur=0, stripe;dur=0"
    return response, 201
