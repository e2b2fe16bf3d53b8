"""Shared by the card-retry tests: a failed off-session payment in the real sandbox and its transaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import select

from recovery.extensions import db as _db
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    CardRetry,
    Organization,
    RecoveryAttempt,
    TransactionStatus,
    utcnow,
)
from tests.fixtures import stripe_events as se

VISA = "4242424242424242"
INSUFFICIENT = "4000000000009995"
CUSTOMER_FAIL = "4000000000000341"
AUTH_ONCE = "4000002500003155"
AUTH_ALWAYS = "4000002760003184"


def sandbox_client(stripe_sandbox: Any) -> stripe.StripeClient:
    return stripe.StripeClient(stripe_sandbox.api_key, base_addresses={"api": stripe_sandbox.base_url})


def failed_payment(
    stripe_sandbox: Any,
    number: str,
    *,
    amount: int = 5000,
    currency: str = "usd",
    metadata: dict[str, str] | None = None,
) -> tuple[str, str, str]:
    """A merchant's off-session charge of a saved card, declined: (payment intent, customer, payment method).

    For a card whose off-session charge succeeds (4242, 3155) the charge is made
    with a declining card first and the good card attached after, as a customer
    who updated their card would: the PaymentIntent still failed, with the good card on file.
    """
    client = sandbox_client(stripe_sandbox)
    customer = client.v1.customers.create({"email": "ada@example.com", "name": "Ada Lovelace"})
    first = number if number not in (VISA, AUTH_ONCE) else INSUFFICIENT
    pm = client.v1.payment_methods.attach(_pm(client, first), {"customer": customer.id})
    try:
        client.v1.payment_intents.create(
            {
                "amount": amount,
                "currency": currency,
                "customer": customer.id,
                "payment_method": pm.id,
                "confirm": True,
                "off_session": True,
                "metadata": metadata or {},
            }
        )
    except stripe.CardError:
        pass
    else:
        raise AssertionError("the first charge was meant to fail")
    intent = client.v1.payment_intents.list({"customer": customer.id}).data[0]
    if first != number:
        pm = client.v1.payment_methods.attach(_pm(client, number), {"customer": customer.id})
    return intent.id, customer.id, pm.id


def _pm(client: stripe.StripeClient, number: str) -> str:
    params: Any = {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2045}}
    return client.v1.payment_methods.create(params).id


def retry_setup(
    make_org: Any,
    make_transaction: Any,
    card: tuple[str, str, str] | None,
    *,
    failure_code: str = "insufficient_funds",
    failed_at: datetime | None = None,
    org: Organization | None = None,
    **overrides: Any,
) -> tuple[int, int]:
    """A transaction that failed with a saved card and an active recovery: (transaction id, attempt id)."""
    org = org or make_org()
    intent_id, customer_id, pm_id = card or (None, None, None)
    values: dict[str, Any] = {
        "status": TransactionStatus.RECOVERING,
        "failure_code": failure_code,
        "failed_at": failed_at or utcnow() - timedelta(days=2),
        "stripe_payment_intent_id": intent_id,
        "stripe_customer_id": customer_id,
        "stripe_payment_method_id": pm_id,
        "source": "stripe",
        **overrides,
    }
    txn = make_transaction(org, **values)
    attempt = RecoveryAttempt(
        organization_id=org.id,
        transaction_id=txn.id,
        channel="email",
        token=se.new_id("tok"),
        status=AttemptStatus.NOTIFIED,
        expires_at=utcnow() + timedelta(days=7),
    )
    _db.session.add(attempt)
    _db.session.commit()
    return txn.id, attempt.id


def reload(model: type, id_: int) -> Any:
    _db.session.expire_all()
    return _db.session.get(model, id_)


def confirms(stripe_sandbox: Any) -> list[dict[str, Any]]:
    """The sandbox's log of confirm calls (one per HTTP request, replays included)."""
    return [r for r in stripe_sandbox.requests() if r["method"] == "POST" and r["path"].endswith("/confirm")]


def summaries(txn_id: int, prefix: str = "card_retry.") -> list[str]:
    _db.session.expire_all()
    return [
        str(event.details.get("summary"))
        for event in _db.session.scalars(
            select(AuditEvent)
            .where(AuditEvent.transaction_id == txn_id, AuditEvent.action.startswith(prefix))
            .order_by(AuditEvent.id)
        )
    ]


def retries_of(txn_id: int) -> list[CardRetry]:
    _db.session.expire_all()
    return list(
        _db.session.scalars(
            select(CardRetry).where(CardRetry.transaction_id == txn_id).order_by(CardRetry.id)
        )
    )


def succeeded_charges(stripe_sandbox: Any, customer_id: str | None = None) -> list[Any]:
    client = sandbox_client(stripe_sandbox)
    params: Any = {"limit": 100, **({"customer": customer_id} if customer_id else {})}
    return [c for c in client.v1.charges.list(params).data if c.status == "succeeded"]
