"""Model → JSON for the API: ISO 8601 UTC times ending in Z, amounts in minor units."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from recovery.models import RecoveryAttempt, Transaction


def iso(value: datetime | None) -> str | None:
    """2025-01-19T10:00:00Z (microseconds kept when there are any); None stays None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def attempt_json(attempt: RecoveryAttempt) -> dict[str, Any]:
    # Not the attempt's token: it is the customer's secret link.
    return {
        "id": attempt.id,
        "channel": attempt.channel,
        "status": attempt.status,
        "expires_at": iso(attempt.expires_at),
        "max_retries": attempt.max_retries,
        "messages_sent": attempt.messages_sent,
        "next_send_at": iso(attempt.next_send_at),
        "created_at": iso(attempt.created_at),
        "completed_at": iso(attempt.completed_at),
    }


def transaction_json(t: Transaction, *, with_attempts: bool = False) -> dict[str, Any]:
    """The API's transaction object; `with_attempts` adds `recovery_attempts`, oldest first."""
    body: dict[str, Any] = {
        "object": "transaction",
        "transaction_ref": t.transaction_ref,
        "amount": t.amount,
        "currency": t.currency,
        "status": t.status,
        "failure_code": t.failure_code,
        "failure_message": t.failure_message,
        "customer_name": t.customer_name,
        "customer_email": t.customer_email,
        "customer_phone": t.customer_phone,
        "customer_country": t.customer_country,
        "customer_locale": t.customer_locale,
        "metadata": t.meta or {},
        "source": t.source,
        "failed_at": iso(t.failed_at),
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
        "recovered_at": iso(t.recovered_at),
        "stripe_payment_intent_id": t.stripe_payment_intent_id,
        "stripe_checkout_session_id": t.stripe_checkout_session_id,
        "stripe_customer_id": t.stripe_customer_id,
        "stripe_payment_link_id": t.stripe_payment_link_id,
        "payment_link_url": t.payment_link_url,
        "checkout_url": t.checkout_url,
        "checkout_expires_at": iso(t.checkout_expires_at),
    }
    if with_attempts:
        body["recovery_attempts"] = [attempt_json(a) for a in t.attempts]
    return body
