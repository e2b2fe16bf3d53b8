"""The floor for the webhook benchmark: a WSGI app that only verifies the signature and inserts.

No Flask, no ORM, no queue: `stripe.WebhookSignature.verify_header`, `json.loads`
and one `INSERT .. ON CONFLICT DO NOTHING` on a pooled psycopg connection.
`gunicorn bench.bare_webhook:app` with BENCH_DATABASE_URL and BARE_WEBHOOK_SECRET set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import stripe

SECRET = os.environ.get("BARE_WEBHOOK_SECRET", "whsec_bench")
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/recovery_bench")
TABLE = """CREATE TABLE IF NOT EXISTS bench_bare_event (
    id BIGSERIAL PRIMARY KEY, stripe_event_id VARCHAR(255) UNIQUE NOT NULL,
    type VARCHAR(100) NOT NULL, payload JSON NOT NULL, received_at TIMESTAMPTZ NOT NULL DEFAULT now())"""

_conn: psycopg.Connection[Any] | None = None


def _connection() -> psycopg.Connection[Any]:
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg.connect(
            DATABASE_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
        )
    return _conn


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    try:
        stripe.WebhookSignature.verify_header(body, environ.get("HTTP_STRIPE_SIGNATURE"), SECRET, 300)
        event = json.loads(body)
    except (stripe.SignatureVerificationError, ValueError):
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"bad"]
    _connection().execute(
        "INSERT INTO bench_bare_event (stripe_event_id, type, payload) VALUES (%s, %s, %s) "
        "ON CONFLICT (stripe_event_id) DO NOTHING",
        (event["id"], event["type"], body.decode()),
    )
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"received": true}']
