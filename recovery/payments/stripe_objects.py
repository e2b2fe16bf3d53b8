"""Stripe's objects as plain values: what the gateway reads from each answer, and the locales Checkout shows.

With `gateway.py` and `webhook_signature.py`, the only modules that import `stripe`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import stripe

# The locales Stripe Checkout can show (stripe-python's SessionCreateParams.locale).
CHECKOUT_LOCALES = frozenset(
    [
        "bg",
        "cs",
        "da",
        "de",
        "el",
        "en",
        "en-GB",
        "es",
        "es-419",
        "et",
        "fi",
        "fil",
        "fr",
        "fr-CA",
        "hi-IN",
        "hr",
        "hu",
        "id",
        "it",
        "ja",
        "ko",
        "lt",
        "lv",
        "ms",
        "mt",
        "nb",
        "nl",
        "pl",
        "pt",
        "pt-BR",
        "ro",
        "ru",
        "sk",
        "sl",
        "sv",
        "th",
        "tr",
        "vi",
        "zh",
        "zh-HK",
        "zh-TW",
    ]
)


@dataclass(frozen=True)
class CheckoutSessionInfo:
    id: str
    url: str | None
    status: str | None  # open, complete, expired
    payment_status: str  # unpaid, paid, no_payment_required
    amount_total: int | None
    currency: str | None
    customer_id: str | None
    customer_email: str | None
    payment_intent_id: str | None
    payment_link_id: str | None
    client_reference_id: str | None
    expires_at: datetime
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PaymentLinkInfo:
    id: str
    url: str
    active: bool
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChargeInfo:
    id: str
    status: str
    paid: bool
    created_at: datetime
    card_brand: str | None
    card_last4: str | None


@dataclass(frozen=True)
class PaymentIntentInfo:
    id: str
    status: str
    amount: int
    currency: str
    metadata: dict[str, str]
    latest_charge_id: str | None
    failure_code: str | None
    decline_code: str | None
    failure_message: str | None
    # The latest charge itself: read in the same request (expand), for receipts.
    latest_charge: ChargeInfo | None = None


def checkout_locale(locale: str | None) -> str:
    """Map a customer's BCP 47 locale (en-US) to one Checkout shows, else let the browser decide."""
    if not locale:
        return "auto"
    if locale in CHECKOUT_LOCALES:
        return locale
    language = locale.split("-")[0].lower()
    return language if language in CHECKOUT_LOCALES else "auto"


def epoch(value: datetime) -> int:
    return int(value.timestamp())


def from_epoch(value: int | None) -> datetime:
    return datetime.fromtimestamp(value or 0, tz=UTC)


def object_id(value: Any) -> str | None:
    """An expandable field is an id, an object with an id, or null."""
    if value is None or isinstance(value, str):
        return value
    return str(value.id)


def metadata_of(value: Any) -> dict[str, str]:
    # A StripeObject is not a dict (stripe-python 13+): convert before iterating.
    data = value.to_dict() if isinstance(value, stripe.StripeObject) else (value or {})
    return {str(k): str(v) for k, v in data.items()}


def session_info(session: stripe.checkout.Session) -> CheckoutSessionInfo:
    details = session.customer_details
    return CheckoutSessionInfo(
        id=session.id,
        url=session.url,
        status=session.status,
        payment_status=session.payment_status,
        amount_total=session.amount_total,
        currency=session.currency,
        customer_id=object_id(session.customer),
        customer_email=session.customer_email or (details.email if details else None),
        payment_intent_id=object_id(session.payment_intent),
        payment_link_id=object_id(session.payment_link),
        client_reference_id=session.client_reference_id,
        expires_at=from_epoch(session.expires_at),
        metadata=metadata_of(session.metadata),
    )


def charge_info(charge: stripe.Charge) -> ChargeInfo:
    details = charge.payment_method_details
    card = details.card if details is not None else None
    return ChargeInfo(
        id=charge.id,
        status=charge.status,
        paid=bool(charge.paid),
        created_at=from_epoch(charge.created),
        card_brand=card.brand if card is not None else None,
        card_last4=card.last4 if card is not None else None,
    )


def link_info(link: stripe.PaymentLink) -> PaymentLinkInfo:
    return PaymentLinkInfo(id=link.id, url=link.url, active=link.active, metadata=metadata_of(link.metadata))
