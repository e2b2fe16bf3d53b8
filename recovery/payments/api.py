"""The fixed Stripe payment endpoints of SPEC.md, for API clients with a Bearer token."""

from __future__ import annotations

import time
from typing import Annotated, Any, Required

from flask import Blueprint, g, jsonify, request
from pydantic import Field, with_config
from typing_extensions import TypedDict
from werkzeug.wrappers import Response

from recovery.api.auth import current_token, install_token_auth, require_token_role, token_actor
from recovery.api.bodies import json_object
from recovery.api.errors import ApiError
from recovery.api.openapi import CLOSED, Timestamp, documented
from recovery.api.serializers import iso
from recovery.extensions import db
from recovery.models import Organization, Role, Transaction
from recovery.payments import checkout, links
from recovery.payments.gateway import reset_stripe_time, stripe_gateway, stripe_time
from recovery.payments.rules import clean_metadata
from recovery.transactions.validation import clean_email

bp = Blueprint("payments_api", __name__, url_prefix="/v1/payments/stripe")

IDEMPOTENCY_KEY_MAX = 255

# The shapes of SPEC.md, fixed: existing clients use them.
MatchingAmount = Annotated[
    int, Field(description="Optional; when given it must be the transaction's (minor units).", gt=0)
]
MatchingCurrency = Annotated[str, Field(description="Optional; when given it must be the transaction's.")]


@with_config(CLOSED)
class CheckoutSessionCreate(TypedDict, total=False):
    transaction_ref: Required[str]
    amount: MatchingAmount
    currency: MatchingCurrency
    customer_email: Annotated[str, Field(description="Default: the transaction's.")]
    metadata: Annotated[
        dict[str, str], Field(description="Added to ours (organization_id, transaction_id, transaction_ref).")
    ]


@with_config(CLOSED)
class CheckoutSessionCreated(TypedDict):
    session_id: str
    payment_intent_id: Annotated[str | None, Field(description="Null until the customer pays.")]
    checkout_url: str
    expires_at: Timestamp | None


@with_config(CLOSED)
class PaymentLinkCreate(TypedDict, total=False):
    transaction_ref: Required[str]
    amount: MatchingAmount
    currency: MatchingCurrency


@with_config(CLOSED)
class PaymentLinkCreated(TypedDict):
    payment_link_id: str
    url: str
    product_id: str
    price_id: str


@with_config(CLOSED)
class SessionStatus(TypedDict):
    session_id: str
    status: Annotated[str | None, Field(description="Stripe's: open, complete or expired.")]
    payment_status: Annotated[str | None, Field(description="Stripe's: paid, unpaid or no_payment_required.")]
    amount_total: int | None
    currency: str | None
    customer_email: str | None
    payment_intent_id: str | None


# The fields the API takes are the ones it documents.
CHECKOUT_FIELDS = CheckoutSessionCreate.__required_keys__ | CheckoutSessionCreate.__optional_keys__
LINK_FIELDS = PaymentLinkCreate.__required_keys__ | PaymentLinkCreate.__optional_keys__

STRIPE_ERRORS = {
    402: "Stripe refused the card (a card error).",
    404: "No such transaction in the token's organization.",
    409: "The transaction is recovered, cancelled or refunded, or the Idempotency-Key was used differently.",
    500: "Stripe rejected our Stripe key.",
    502: "Stripe is unreachable or failing (Stripe's message).",
    503: "No Stripe key is configured (`Stripe API key not configured`), or Stripe is rate limiting.",
    422: (
        "A field is unknown or not valid, `amount` or `currency` is not the transaction's, the amount "
        "is one Stripe cannot charge (below its minimum for the currency, or a fraction it does not "
        "collect), or Stripe refused the request as invalid; `fields` names the input when there is one."
    ),
}
IDEMPOTENCY = (
    "Send an `Idempotency-Key` header (1 to 255 characters): every repeat with that key returns the "
    "first answer."
)


@bp.before_request
def start_timer() -> None:
    g.payments_started = time.perf_counter()
    reset_stripe_time()


@bp.after_request
def server_timing(response: Response) -> Response:
    """Report our time and Stripe's separately (how docs/performance.md measures our overhead)."""
    started = g.get("payments_started")
    if started is not None:
        total = (time.perf_counter() - started) * 1000
        stripe_ms = stripe_time() * 1000
        response.headers["Server-Timing"] = f"app;dur={total:.2f}, stripe;dur={stripe_ms:.2f}"
    return response


# After the timer, so that our measured time includes finding the token.
install_token_auth(bp)


def _body(allowed: frozenset[str]) -> dict[str, Any]:
    body = json_object()
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(
            422,
            "validation_error",
            f"Unknown field(s): {', '.join(unknown)}.",
            dict.fromkeys(unknown, "Unknown field."),
        )
    return body


def _transaction(body: dict[str, Any]) -> tuple[Transaction, Organization]:
    ref = body.get("transaction_ref")
    if not isinstance(ref, str) or not ref.strip():
        raise ApiError(
            422, "validation_error", "transaction_ref is required.", {"transaction_ref": "Required."}
        )
    found = checkout.transaction_by_ref(db.session, current_token().organization_id, ref.strip())
    if found is None:
        raise ApiError(404, "not_found", "Transaction not found")
    return found


def _amount_and_currency(body: dict[str, Any]) -> tuple[int | None, str | None]:
    amount, currency = body.get("amount"), body.get("currency")
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0):
        raise ApiError(
            422,
            "validation_error",
            "amount must be a positive integer in the currency's minor unit.",
            {"amount": "Must be a positive integer (minor units, e.g. 5000 for $50.00)."},
        )
    if currency is not None and not isinstance(currency, str):
        raise ApiError(
            422, "validation_error", "currency must be a string.", {"currency": "Must be an ISO 4217 code."}
        )
    return amount, currency


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key.strip() or len(key) > IDEMPOTENCY_KEY_MAX:
        raise ApiError(
            400, "invalid_request", f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters."
        )
    return key


@bp.post("/checkout-sessions")
@documented(
    summary="Create a Checkout Session for a transaction",
    tag="Payments",
    request=CheckoutSessionCreate,
    response=CheckoutSessionCreated,
    status=201,
    errors={**STRIPE_ERRORS, 400: "The body is not a JSON object, or the Idempotency-Key is too long."},
    request_example={
        "transaction_ref": "TXN-001",
        "amount": 5000,
        "currency": "usd",
        "customer_email": "customer@example.com",
        "metadata": {"order_id": "ORD-123"},
    },
    response_example={
        "session_id": "cs_test_a1b2",
        "payment_intent_id": None,
        "checkout_url": "https://checkout.stripe.com/c/pay/cs_test_a1b2",
        "expires_at": "2025-01-19T10:00:00Z",
    },
    description=IDEMPOTENCY,
)
@require_token_role(Role.OPERATOR)
def create_checkout_session() -> tuple[Response, int]:
    """Create a Checkout Session for a transaction (SPEC.md's fixed shape)."""
    body = _body(CHECKOUT_FIELDS)
    transaction, organization = _transaction(body)
    amount, currency = _amount_and_currency(body)
    email = body.get("customer_email")
    if email is not None:
        try:
            email = clean_email(email)
        except ValueError as error:
            raise ApiError(422, "validation_error", str(error), {"customer_email": str(error)}) from None
    metadata = clean_metadata(body.get("metadata"))
    record = checkout.create_checkout_session(
        db.session,
        stripe_gateway(),
        transaction,
        token_actor(),
        checkout.CheckoutRequest(
            action=f"api:{key}" if (key := _idempotency_key()) else None,
            action_from_client=True,
            customer_email=email,
            metadata=metadata,
            amount=amount,
            currency=currency,
        ),
        organization=organization,
    )
    return jsonify(
        session_id=record.stripe_session_id,
        payment_intent_id=record.stripe_payment_intent_id,
        checkout_url=record.url,
        expires_at=iso(record.expires_at),
    ), 201


@bp.post("/payment-links")
@documented(
    summary="Create (or return the active) Payment Link for a transaction",
    tag="Payments",
    request=PaymentLinkCreate,
    response=PaymentLinkCreated,
    status=201,
    errors=STRIPE_ERRORS,
    request_example={"transaction_ref": "TXN-001", "amount": 5000, "currency": "usd"},
    response_example={
        "payment_link_id": "plink_1Q",
        "url": "https://buy.stripe.com/test_1Q",
        "product_id": "prod_1Q",
        "price_id": "price_1Q",
    },
    description="A link can be paid once; while it is active, the same call returns it.",
)
@require_token_role(Role.OPERATOR)
def create_payment_link() -> tuple[Response, int]:
    """Create (or return the still active) Payment Link for a transaction."""
    body = _body(LINK_FIELDS)
    transaction, _ = _transaction(body)
    amount, currency = _amount_and_currency(body)
    result = links.create_payment_link(
        db.session, stripe_gateway(), transaction, token_actor(), amount=amount, currency=currency
    )
    return jsonify(
        payment_link_id=result.payment_link_id,
        url=result.url,
        product_id=result.product_id,
        price_id=result.price_id,
    ), 201


@bp.get("/sessions/<session_id>/status")
@documented(
    summary="Read a Checkout Session's live status",
    tag="Payments",
    response=SessionStatus,
    path_params={"session_id": "A Checkout Session of this organization (cs_...)."},
    errors={
        404: "No such Checkout Session in the token's organization.",
        422: "Stripe refused the request as invalid (Stripe's message).",
        500: STRIPE_ERRORS[500],
        502: STRIPE_ERRORS[502],
        503: STRIPE_ERRORS[503],
    },
    response_example={
        "session_id": "cs_test_a1b2",
        "status": "complete",
        "payment_status": "paid",
        "amount_total": 5000,
        "currency": "usd",
        "customer_email": "customer@example.com",
        "payment_intent_id": "pi_3Q",
    },
    description="Read live from Stripe. Reading it never marks a transaction recovered: the webhook does.",
)
@require_token_role(Role.VIEWER)
def session_status(session_id: str) -> Response:
    """The live status of one of this organization's Checkout Sessions."""
    organization_id = current_token().organization_id
    record = checkout.find_checkout_session(db.session, organization_id, session_id)
    gateway = stripe_gateway()
    if record is not None:
        info = checkout.refresh_checkout_session(db.session, gateway, record)
    else:  # opened from one of our Payment Links, say
        found = checkout.unrecorded_checkout_session(db.session, gateway, organization_id, session_id)
        if found is None:
            raise ApiError(404, "not_found", "Checkout session not found")
        info = found
    return jsonify(
        session_id=info.id,
        status=info.status,
        payment_status=info.payment_status,
        amount_total=info.amount_total,
        currency=info.currency,
        customer_email=info.customer_email or (record.customer_email if record else None),
        payment_intent_id=info.payment_intent_id,
    )
