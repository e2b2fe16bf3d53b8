"""Stripe events as Stripe sends them, signed with stripe-python's own helper, for the webhook tests."""

from __future__ import annotations

import json
import time
from itertools import count
from typing import Any

import stripe

from recovery.models import Transaction

SECRET = "whsec_test_webhooks"
URL = "/v1/payments/stripe/webhooks"

_ids = count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_test{next(_ids):06d}{int(time.time() * 1000) % 100000}"


def metadata(txn: Transaction, attempt_id: int | None = None, **overrides: Any) -> dict[str, str]:
    values = {
        "organization_id": str(txn.organization_id),
        "transaction_id": str(txn.id),
        "transaction_ref": txn.transaction_ref,
    }
    if attempt_id is not None:
        values["attempt_id"] = str(attempt_id)
    values.update({k: str(v) for k, v in overrides.items()})
    return values


def event(
    type: str, obj: dict[str, Any], *, id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    return {
        "id": id or new_id("evt"),
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created or int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }


def checkout_session(
    txn: Transaction | None,
    *,
    id: str | None = None,
    payment_intent: str | None = None,
    payment_status: str = "paid",
    status: str = "complete",
    attempt_id: int | None = None,
    meta: dict[str, str] | None = None,
    payment_link: str | None = None,
) -> dict[str, Any]:
    return {
        "id": id or new_id("cs"),
        "object": "checkout.session",
        "amount_total": txn.amount if txn else 5000,
        "currency": txn.currency if txn else "usd",
        "client_reference_id": None,
        "metadata": meta if meta is not None else (metadata(txn, attempt_id) if txn else {}),
        "mode": "payment",
        "payment_intent": payment_intent,
        "payment_link": payment_link,
        "payment_status": payment_status,
        "status": status,
    }


def payment_intent(
    txn: Transaction | None,
    *,
    id: str | None = None,
    status: str = "succeeded",
    amount: int = 5000,
    currency: str = "usd",
    meta: dict[str, str] | None = None,
    failure: tuple[str, str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": id or new_id("pi"),
        "object": "payment_intent",
        "amount": txn.amount if txn else amount,
        "amount_received": (txn.amount if txn else amount) if status == "succeeded" else 0,
        "currency": txn.currency if txn else currency,
        "created": int(time.time()) - 5,
        "customer": None,
        "metadata": meta if meta is not None else (metadata(txn) if txn else {}),
        "receipt_email": None,
        "status": status,
        "last_payment_error": None,
    }
    if failure:
        code, decline_code, message = failure
        obj["last_payment_error"] = {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": message,
            "payment_method": {"id": "pm_x", "billing_details": {"email": None, "name": None}},
        }
    obj.update(fields)
    return obj


def charge(txn: Transaction, *, payment_intent: str, refunded: int, id: str | None = None) -> dict[str, Any]:
    return {
        "id": id or new_id("ch"),
        "object": "charge",
        "amount": txn.amount,
        "amount_refunded": refunded,
        "currency": txn.currency,
        "metadata": {},
        "payment_intent": payment_intent,
        "refunded": refunded >= txn.amount,
    }


def declined(txn: Transaction | None, **fields: Any) -> dict[str, Any]:
    """A PaymentIntent whose card was declined: what payment_intent.payment_failed carries."""
    fields.setdefault("failure", ("card_declined", "generic_decline", "Declined."))
    return payment_intent(txn, status="requires_payment_method", **fields)


def body(evt: dict[str, Any]) -> str:
    return json.dumps(evt, indent=2)


def sign(payload: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    return str(stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp))


def post(
    client: Any, evt: dict[str, Any] | str, *, secret: str = SECRET, path: str = URL, **headers: str
) -> Any:
    payload = evt if isinstance(evt, str) else body(evt)
    all_headers = {"Stripe-Signature": sign(payload, secret), "Content-Type": "application/json", **headers}
    return client.post(path, data=payload.encode(), headers=all_headers)
