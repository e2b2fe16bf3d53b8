"""Model → JSON for the API: ISO 8601 UTC times ending in Z, amounts in minor units."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, NotRequired, overload

from pydantic import Field, with_config
from typing_extensions import TypedDict

from recovery.api.openapi import CLOSED, Timestamp, enum_of
from recovery.declines import CATEGORIES
from recovery.models import AttemptStatus, Channel, RecoveryAttempt, Transaction, TransactionStatus

# The answers' shapes: the serializers return them (mypy checks), the OpenAPI document is built from them.


@with_config(CLOSED)
class AttemptSummary(TypedDict):
    """One recovery campaign of a transaction, as listed on it (the full object is `Recovery`)."""

    id: int
    channel: Annotated[str, enum_of((Channel.EMAIL, Channel.SMS, Channel.BOTH), "Who is messaged.")]
    status: Annotated[str, enum_of(AttemptStatus.ALL, "Where the campaign stands.")]
    expires_at: Annotated[Timestamp, Field(description="When the customer's link stops working.")]
    max_retries: int
    messages_sent: int
    next_send_at: Timestamp | None
    created_at: Timestamp
    completed_at: Timestamp | None


@with_config(CLOSED)
class TransactionObject(TypedDict):
    """A failed payment. Amounts are integers in the currency's minor unit (5000 usd = $50.00)."""

    object: Annotated[str, Field(json_schema_extra={"const": "transaction"})]
    transaction_ref: Annotated[
        str, Field(description="Your reference, unique in the organization.", examples=["TXN-001"])
    ]
    amount: Annotated[
        int, Field(description="In the currency's minor unit: 5000 usd is $50.00.", examples=[5000])
    ]
    currency: Annotated[str, Field(description="ISO 4217, lower case.", examples=["usd"])]
    status: Annotated[str, enum_of(TransactionStatus.ALL, "Where the money stands.")]
    failure_code: Annotated[str | None, Field(examples=["insufficient_funds"])]
    failure_message: Annotated[str | None, Field(examples=["Your card has insufficient funds."])]
    decline_category: Annotated[
        str,
        enum_of(
            CATEGORIES,
            "What the decline code says about a recovery: retry_later (the card may work again), "
            "customer_action (the customer must pay with other details), do_not_contact (lost, stolen, "
            "fraud), unknown.",
        ),
    ]
    customer_name: Annotated[str | None, Field(examples=["Ada Lovelace"])]
    customer_email: Annotated[str | None, Field(examples=["ada@example.com"])]
    customer_phone: Annotated[str | None, Field(description="E.164, e.g. +442079460958.")]
    customer_country: Annotated[str | None, Field(description="ISO 3166 two-letter code.")]
    customer_locale: str | None
    metadata: Annotated[dict[str, Any], Field(examples=[{"order_id": "ORD-123"}])]
    source: Annotated[str, Field(description="How it arrived: api, csv, form, stripe, ...", examples=["api"])]
    failed_at: Annotated[Timestamp | None, Field(examples=["2025-01-19T10:00:00Z"])]
    created_at: Annotated[Timestamp | None, Field(examples=["2025-01-19T10:02:13.645598Z"])]
    updated_at: Timestamp | None
    recovered_at: Timestamp | None
    stripe_payment_intent_id: str | None
    stripe_checkout_session_id: str | None
    stripe_customer_id: str | None
    stripe_payment_link_id: str | None
    payment_link_url: str | None
    checkout_url: str | None
    checkout_expires_at: Timestamp | None
    closed_at: Annotated[
        Timestamp | None,
        Field(description="When staff closed it (status `cancelled`, shown as Closed); null while open."),
    ]
    closed_by: Annotated[str | None, Field(description="Who closed it: a user's email or a token's name.")]
    closed_reason: Annotated[str | None, Field(description="Why, as given when closing it.")]
    review_status: Annotated[
        str | None,
        Field(
            description="held: waiting in the review queue; approved or dismissed after; null if never held."
        ),
    ]
    review_reason: Annotated[str | None, Field(description="Why it was held (or dismissed).")]
    no_recovery_reason: Annotated[
        str | None,
        Field(description="A rule said not to recover it, and why; cleared when a recovery starts."),
    ]
    recovery_attempts: NotRequired[
        Annotated[
            list[AttemptSummary],
            Field(description="Only on a single transaction: each campaign, oldest first."),
        ]
    ]


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: datetime | None) -> str | None: ...
def iso(value: datetime | None) -> str | None:
    """2025-01-19T10:00:00Z (microseconds kept when there are any); None stays None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def attempt_json(attempt: RecoveryAttempt) -> AttemptSummary:
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


def transaction_json(t: Transaction, *, with_attempts: bool = False) -> TransactionObject:
    """The API's transaction object; `with_attempts` adds `recovery_attempts`, oldest first."""
    body: TransactionObject = {
        "object": "transaction",
        "transaction_ref": t.transaction_ref,
        "amount": t.amount,
        "currency": t.currency,
        "status": t.status,
        "failure_code": t.failure_code,
        "failure_message": t.failure_message,
        "decline_category": t.decline_category,
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
        "closed_at": iso(t.closed_at),
        "closed_by": t.closed_by,
        "closed_reason": t.closed_reason,
        "review_status": t.review_status,
        "review_reason": t.review_reason,
        "no_recovery_reason": t.no_recovery_reason,
    }
    if with_attempts:
        body["recovery_attempts"] = [attempt_json(a) for a in t.attempts]
    return body
