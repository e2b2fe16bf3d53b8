"""The one module that talks to Stripe, through stripe-python's StripeClient.

Nothing else imports `stripe`. Callers pass explicit settings and get plain
values back (`CheckoutSessionInfo`, `PaymentLinkInfo`, ...) or a `StripeFailure`
that says what went wrong in words a person can act on.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import stripe
from stripe.params import (
    CustomerCreateParams,
    PaymentIntentRetrieveParams,
    PaymentLinkCreateParams,
    PaymentLinkUpdateParams,
    PriceCreateParams,
    ProductCreateParams,
)
from stripe.params.checkout import SessionCreateParams

from recovery.logs import get_logger

log = get_logger("recovery.stripe")

NOT_CONFIGURED = "Stripe API key not configured"

# The Stripe API version every request names (the Stripe-Version header), so the
# account's default version, which its owner can change in the Dashboard, never
# changes the objects we read. It is the version this stripe-python release is
# typed against (stripe/_api_version.py); upgrade the two together.
STRIPE_API_VERSION = "2026-10-28.endive"

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

T = TypeVar("T")

# Seconds spent waiting on Stripe in the current request or job, so that our own
# time can be told apart from Stripe's (Server-Timing header, benchmark).
_stripe_seconds: ContextVar[float] = ContextVar("stripe_seconds", default=0.0)


def reset_stripe_time() -> None:
    _stripe_seconds.set(0.0)


def stripe_time() -> float:
    """Seconds spent in Stripe calls since the last reset_stripe_time()."""
    return _stripe_seconds.get()


@dataclass(frozen=True)
class StripeSettings:
    secret_key: str
    api_base: str = ""
    timeout_seconds: int = 10
    max_network_retries: int = 2

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StripeSettings:
        return cls(
            secret_key=str(config.get("STRIPE_SECRET_KEY") or "").strip(),
            api_base=str(config.get("STRIPE_API_BASE") or "").strip().rstrip("/"),
            timeout_seconds=int(config.get("STRIPE_TIMEOUT_SECONDS", 10)),
            max_network_retries=int(config.get("STRIPE_MAX_NETWORK_RETRIES", 2)),
        )

    @property
    def livemode(self) -> bool | None:
        """True for a live key, False for a test key, None when there is none (or it is not Stripe's)."""
        for prefix, live in (
            ("sk_live_", True),
            ("rk_live_", True),
            ("sk_test_", False),
            ("rk_test_", False),
        ):
            if self.secret_key.startswith(prefix):
                return live
        return None

    @property
    def worst_case_seconds(self) -> float:
        """How long one call can take with every retry timing out (for job timeouts)."""
        # stripe-python sleeps at most 2 s between retries (MAX_RETRY_DELAY).
        tries = self.max_network_retries + 1
        return tries * self.timeout_seconds + self.max_network_retries * 2.0


class StripeFailure(Exception):
    """Stripe refused or could not be reached; `message` is safe to show staff and API clients."""

    def __init__(
        self,
        kind: str,
        message: str,
        http_status: int,
        *,
        retryable: bool = False,
        code: str | None = None,
        decline_code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.http_status = http_status
        self.retryable = retryable
        self.code = code
        self.decline_code = decline_code
        self.param = param
        self.request_id = request_id


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


@functools.lru_cache(maxsize=8)
def _client(settings: StripeSettings) -> stripe.StripeClient:
    # One client (and its pooled HTTP session) per settings: building one per
    # call would pay a TLS handshake to Stripe on every request.
    base = {"api": settings.api_base} if settings.api_base else None
    return stripe.StripeClient(
        settings.secret_key,
        base_addresses=base,  # type: ignore[arg-type]  # the TypedDict's keys are all optional
        max_network_retries=settings.max_network_retries,
        http_client=stripe.RequestsClient(timeout=settings.timeout_seconds),
        stripe_version=STRIPE_API_VERSION,
    )


# What an error code means, for the rare Stripe answer that carries a code but no message.
_CODE_SENTENCES = {
    "amount_too_small": "The amount is below the minimum Stripe can charge in this currency.",
    "amount_too_large": "The amount is above the maximum Stripe can charge.",
    "resource_missing": "Stripe has no such object.",
    "parameter_invalid_integer": "Stripe expected a whole number.",
}


def _translate(error: stripe.StripeError) -> StripeFailure:
    """Turn stripe-python's exception into one clear message and the HTTP status that fits."""
    request_id = getattr(error, "request_id", None)
    code = getattr(error, "code", None)
    param = getattr(error, "param", None)
    # Stripe's own sentence; its bare code only when it sent none (an error code is not a message).
    text = error.user_message or _CODE_SENTENCES.get(code or "") or f"Stripe error ({code or 'no code'})"
    if isinstance(error, stripe.CardError):
        return StripeFailure(
            "card_error",
            text,
            402,
            code=code,
            decline_code=getattr(error, "decline_code", None),
            param=param,
            request_id=request_id,
        )
    if isinstance(error, stripe.IdempotencyError):
        return StripeFailure(
            "idempotency_error",
            f"Stripe refused a repeated request with different details: {text}",
            409,
            request_id=request_id,
        )
    if isinstance(error, stripe.InvalidRequestError):
        status = 404 if code == "resource_missing" else 422
        return StripeFailure("invalid_request", text, status, code=code, param=param, request_id=request_id)
    if isinstance(error, stripe.AuthenticationError):
        return StripeFailure(
            "authentication",
            "Stripe rejected the API key: check STRIPE_SECRET_KEY.",
            500,
            request_id=request_id,
        )
    if isinstance(error, stripe.PermissionError):
        return StripeFailure(
            "permission",
            f"The Stripe API key may not do this: {text}",
            500,
            request_id=request_id,
        )
    if isinstance(error, stripe.RateLimitError):
        return StripeFailure(
            "rate_limited",
            "Stripe is rate limiting our requests; try again in a few seconds.",
            503,
            retryable=True,
            request_id=request_id,
        )
    if isinstance(error, stripe.APIConnectionError):
        return StripeFailure(
            "connection",
            "Could not reach Stripe; try again shortly.",
            502,
            retryable=True,
            request_id=request_id,
        )
    return StripeFailure(
        "api_error",
        f"Stripe could not complete the request: {text}",
        502,
        retryable=True,
        request_id=request_id,
    )


def _epoch(value: datetime) -> int:
    return int(value.timestamp())


def _from_epoch(value: int | None) -> datetime:
    return datetime.fromtimestamp(value or 0, tz=UTC)


def _id(value: Any) -> str | None:
    """An expandable field is an id, an object with an id, or null."""
    if value is None or isinstance(value, str):
        return value
    return str(value.id)


def _metadata(value: Any) -> dict[str, str]:
    # A StripeObject is not a dict (stripe-python 13+): convert before iterating.
    data = value.to_dict() if isinstance(value, stripe.StripeObject) else (value or {})
    return {str(k): str(v) for k, v in data.items()}


def _session_info(session: stripe.checkout.Session) -> CheckoutSessionInfo:
    details = session.customer_details
    return CheckoutSessionInfo(
        id=session.id,
        url=session.url,
        status=session.status,
        payment_status=session.payment_status,
        amount_total=session.amount_total,
        currency=session.currency,
        customer_id=_id(session.customer),
        customer_email=session.customer_email or (details.email if details else None),
        payment_intent_id=_id(session.payment_intent),
        payment_link_id=_id(session.payment_link),
        client_reference_id=session.client_reference_id,
        expires_at=_from_epoch(session.expires_at),
        metadata=_metadata(session.metadata),
    )


def _charge_info(charge: stripe.Charge) -> ChargeInfo:
    details = charge.payment_method_details
    card = details.card if details is not None else None
    return ChargeInfo(
        id=charge.id,
        status=charge.status,
        paid=bool(charge.paid),
        created_at=_from_epoch(charge.created),
        card_brand=card.brand if card is not None else None,
        card_last4=card.last4 if card is not None else None,
    )


def _link_info(link: stripe.PaymentLink) -> PaymentLinkInfo:
    return PaymentLinkInfo(id=link.id, url=link.url, active=link.active, metadata=_metadata(link.metadata))


class StripeGateway:
    """Stripe calls the app makes, each with explicit arguments and our own idempotency key."""

    def __init__(self, settings: StripeSettings) -> None:
        if not settings.secret_key:
            raise StripeFailure("not_configured", NOT_CONFIGURED, 503)
        self.settings = settings
        self._stripe = _client(settings)

    def _call(self, event: str, call: Callable[[], T], **fields: Any) -> T:
        started = time.perf_counter()
        try:
            return call()
        except stripe.StripeError as error:
            failure = _translate(error)
            log.warning(
                "stripe_call_failed",
                call=event,
                kind=failure.kind,
                stripe_code=failure.code,
                stripe_param=failure.param,
                http_status=error.http_status,
                request_id=failure.request_id,
                **fields,
            )
            raise failure from error
        finally:
            _stripe_seconds.set(_stripe_seconds.get() + time.perf_counter() - started)

    def create_customer(self, *, email: str, name: str | None, metadata: dict[str, str], key: str) -> str:
        """Create a Customer; the key makes a repeat return the first one."""
        params: CustomerCreateParams = {"email": email, "metadata": metadata}
        if name:
            params["name"] = name
        customer = self._call(
            "create_customer",
            lambda: self._stripe.v1.customers.create(params, {"idempotency_key": key}),
        )
        return customer.id

    def create_product(self, *, name: str, metadata: dict[str, str], key: str) -> str:
        params: ProductCreateParams = {"name": name, "metadata": metadata}
        product = self._call(
            "create_product", lambda: self._stripe.v1.products.create(params, {"idempotency_key": key})
        )
        return product.id

    def create_price(self, *, product_id: str, amount: int, currency: str, key: str) -> str:
        params: PriceCreateParams = {"product": product_id, "unit_amount": amount, "currency": currency}
        price = self._call(
            "create_price", lambda: self._stripe.v1.prices.create(params, {"idempotency_key": key})
        )
        return price.id

    def create_checkout_session(
        self,
        *,
        amount: int,
        currency: str,
        product_name: str,
        customer_id: str | None,
        customer_email: str | None,
        client_reference_id: str,
        metadata: dict[str, str],
        success_url: str,
        cancel_url: str,
        expires_at: datetime,
        locale: str | None,
        key: str,
    ) -> CheckoutSessionInfo:
        """Create a one-off payment-mode Checkout Session for `amount` in `currency`.

        Safe to repeat with the same key and arguments: Stripe answers with the
        session the first call created.
        """
        params: SessionCreateParams = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": currency,
                        "unit_amount": amount,
                        "product_data": {"name": product_name},
                    },
                }
            ],
            "client_reference_id": client_reference_id,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "success_url": success_url,
            "cancel_url": cancel_url,
            "expires_at": _epoch(expires_at),
            "locale": checkout_locale(locale),
        }
        if customer_id:
            params["customer"] = customer_id
        elif customer_email:
            params["customer_email"] = customer_email
        session = self._call(
            "create_checkout_session",
            lambda: self._stripe.v1.checkout.sessions.create(params, {"idempotency_key": key}),
            client_reference_id=client_reference_id,
        )
        return _session_info(session)

    def retrieve_checkout_session(self, session_id: str) -> CheckoutSessionInfo:
        session = self._call(
            "retrieve_checkout_session",
            lambda: self._stripe.v1.checkout.sessions.retrieve(session_id),
            session_id=session_id,
        )
        return _session_info(session)

    def expire_checkout_session(self, session_id: str) -> CheckoutSessionInfo:
        """Expire an open session so it can no longer be paid."""
        session = self._call(
            "expire_checkout_session",
            lambda: self._stripe.v1.checkout.sessions.expire(session_id),
            session_id=session_id,
        )
        return _session_info(session)

    def create_payment_link(
        self, *, price_id: str, metadata: dict[str, str], success_url: str, key: str
    ) -> PaymentLinkInfo:
        """Create a Payment Link that can be paid once, then sends the customer to our success page."""
        params: PaymentLinkCreateParams = {
            "line_items": [{"price": price_id, "quantity": 1}],
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "restrictions": {"completed_sessions": {"limit": 1}},
            "after_completion": {"type": "redirect", "redirect": {"url": success_url}},
        }
        link = self._call(
            "create_payment_link",
            lambda: self._stripe.v1.payment_links.create(params, {"idempotency_key": key}),
            price_id=price_id,
        )
        return _link_info(link)

    def retrieve_payment_link(self, link_id: str) -> PaymentLinkInfo:
        link = self._call(
            "retrieve_payment_link",
            lambda: self._stripe.v1.payment_links.retrieve(link_id),
            payment_link_id=link_id,
        )
        return _link_info(link)

    def deactivate_payment_link(self, link_id: str) -> PaymentLinkInfo:
        """Switch a Payment Link off; safe to repeat."""
        params: PaymentLinkUpdateParams = {"active": False}
        link = self._call(
            "deactivate_payment_link",
            lambda: self._stripe.v1.payment_links.update(link_id, params),
            payment_link_id=link_id,
        )
        return _link_info(link)

    def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntentInfo:
        """A PaymentIntent with its latest charge (the card, for a receipt) in one request."""
        params: PaymentIntentRetrieveParams = {"expand": ["latest_charge"]}
        intent = self._call(
            "retrieve_payment_intent",
            lambda: self._stripe.v1.payment_intents.retrieve(payment_intent_id, params),
            payment_intent_id=payment_intent_id,
        )
        error = intent.last_payment_error
        charge = intent.latest_charge
        return PaymentIntentInfo(
            id=intent.id,
            status=intent.status,
            amount=intent.amount,
            currency=intent.currency,
            metadata=_metadata(intent.metadata),
            latest_charge_id=_id(intent.latest_charge),
            failure_code=error.code if error else None,
            decline_code=error.decline_code if error else None,
            failure_message=error.message if error else None,
            latest_charge=_charge_info(charge) if isinstance(charge, stripe.Charge) else None,
        )


# --- webhooks ---------------------------------------------------------------


class WebhookRejected(Exception):
    """A webhook request we refuse: `reason` is a short code for logs, `message` the answer body."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _signature_timestamp(header: str) -> int | None:
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def verify_webhook(
    payload: bytes, header: str | None, secrets: list[str], tolerance: int, *, now: float | None = None
) -> dict[str, Any]:
    """Check the `Stripe-Signature` header over the raw body and return the event as a plain dict.

    Every secret is tried (rotation: Stripe signs with the old and new secret,
    one `v1` each, while both are live). Timestamps more than `tolerance`
    seconds old or in the future are refused: a captured request cannot be
    replayed later. `json.loads`, not `construct_event`: building StripeObjects
    costs ~100x the HMAC and processing works on the stored dict anyway.
    """
    if not header:
        raise WebhookRejected("missing_signature", "missing signature")
    if tolerance <= 0:
        raise ValueError("tolerance must be positive")
    if not secrets:
        raise WebhookRejected("not_configured", "webhook secret not configured")
    timestamp = _signature_timestamp(header)
    if timestamp is None:
        raise WebhookRejected("malformed_signature", "invalid signature")
    current = time.time() if now is None else now
    if timestamp > current + tolerance:
        raise WebhookRejected("timestamp_in_future", "invalid signature: timestamp outside the tolerance")
    if timestamp < current - tolerance:
        raise WebhookRejected("timestamp_too_old", "invalid signature: timestamp outside the tolerance")
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
        except stripe.SignatureVerificationError:
            continue
        except UnicodeDecodeError:
            raise WebhookRejected("not_utf8", "invalid body: not UTF-8") from None
        break
    else:
        raise WebhookRejected("bad_signature", "invalid signature")
    try:
        event = json.loads(payload)
    except ValueError:
        raise WebhookRejected("not_json", "invalid body: not JSON") from None
    if not _looks_like_event(event):
        raise WebhookRejected("not_an_event", "invalid body: not a Stripe event")
    return event  # type: ignore[no-any-return]


def is_event_id(value: str) -> bool:
    """Whether `value` has the shape of a Stripe event id (any of the shapes Stripe uses)."""
    return _EVENT_ID.fullmatch(value) is not None


# Stripe's event ids in every shape it uses: evt_1NG8Du2eZvKYlo2CUI79vXWy,
# evt_3..., thin events' evt_test_65R..., up to the 255 characters Stripe allows
# an id (and our column holds). Letters, digits and underscores only.
_EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,251}")


def _looks_like_event(event: Any) -> bool:
    return (
        isinstance(event, dict)
        and event.get("object") == "event"
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and 0 < len(event["type"]) <= 100
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
    )
