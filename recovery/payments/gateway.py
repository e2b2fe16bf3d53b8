"""The app's Stripe gateway: stripe-python's StripeClient behind the calls the app makes.

Built once per app (`init_app`, in `app.extensions`); `stripe_gateway()` is
how views and jobs reach it, and the one place tests point it elsewhere.
With `stripe_objects.py` and `webhook_signature.py` it is all that imports
`stripe`. Callers get plain values back (`CheckoutSessionInfo`, ...) or a
`StripeFailure` that says what went wrong in words a person can act on.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import stripe
from flask import Flask, current_app
from stripe.params import (
    CustomerCreateParams,
    PaymentIntentConfirmParams,
    PaymentIntentRetrieveParams,
    PaymentLinkCreateParams,
    PaymentLinkUpdateParams,
    PriceCreateParams,
    ProductCreateParams,
)
from stripe.params.checkout import SessionCreateParams

from recovery.logs import get_logger
from recovery.payments.stripe_objects import (
    CheckoutSessionInfo,
    PaymentIntentInfo,
    PaymentLinkInfo,
    charge_info,
    checkout_locale,
    epoch,
    link_info,
    metadata_of,
    object_id,
    session_info,
)
from recovery.refusals import Refused

log = get_logger("recovery.stripe")

NOT_CONFIGURED = "Stripe API key not configured"

# The Stripe API version every request names (the Stripe-Version header), so the
# account's default version, which its owner can change in the Dashboard, never
# changes the objects we read. It is the version this stripe-python release is
# typed against (stripe/_api_version.py); upgrade the two together.
STRIPE_API_VERSION = "2026-10-28.endive"

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
    # How long a Checkout Session we create stays payable (Stripe allows 30 minutes to 24 hours).
    checkout_expires: timedelta = timedelta(hours=24)
    # Where Stripe sends customers back to (our customer pages).
    base_url: str = ""
    # What signs a Payment Link's success URL: the app's secret key after the ones it replaced.
    link_keys: tuple[str, ...] = ()
    # Stripe lookups a client's success pages may cause per minute (the rate limit is shared by all).
    success_lookups_per_minute: int = 20

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StripeSettings:
        return cls(
            secret_key=str(config.get("STRIPE_SECRET_KEY") or "").strip(),
            api_base=str(config.get("STRIPE_API_BASE") or "").strip().rstrip("/"),
            timeout_seconds=int(config.get("STRIPE_TIMEOUT_SECONDS", 10)),
            max_network_retries=int(config.get("STRIPE_MAX_NETWORK_RETRIES", 2)),
            checkout_expires=timedelta(minutes=int(config.get("STRIPE_CHECKOUT_EXPIRES_MINUTES", 24 * 60))),
            base_url=str(config.get("BASE_URL") or ""),
            link_keys=(
                *(str(key) for key in config.get("SECRET_KEY_FALLBACKS") or ()),
                str(config.get("SECRET_KEY") or ""),
            ),
            success_lookups_per_minute=int(config.get("SUCCESS_LOOKUPS_PER_MINUTE", 20)),
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


class StripeFailure(Refused):
    """Stripe refused or could not be reached; `message` is safe to show staff and API clients.

    A refusal like any other: a page flashes it, the API answers it with its
    status and `stripe_<kind>` as the error type.
    """

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
        super().__init__(message, status=http_status)
        # What went wrong at Stripe (card_error, connection, ...); not Refused's class-level default.
        self.kind = kind
        self.retryable = retryable
        self.code = code
        self.decline_code = decline_code
        self.param = param
        self.request_id = request_id

    @property
    def http_status(self) -> int:
        return self.status

    @property
    def api_type(self) -> str:
        return f"stripe_{self.kind}"


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
    """Turn stripe-python's exception into one clear message and the HTTP status that fits.

    One branch per stripe-python error class, kept in one function so that the
    mapping reads as a table (and its order, most specific first, stays visible).
    """
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
            # stripe-python keeps it on the error object (`error.error`), not on the exception.
            decline_code=getattr(error.error, "decline_code", None) or getattr(error, "decline_code", None),
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

    def create_checkout_session(  # noqa: PLR0913 -- keyword-only, one per Stripe parameter we set
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
            "expires_at": epoch(expires_at),
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
        return session_info(session)

    def retrieve_checkout_session(self, session_id: str) -> CheckoutSessionInfo:
        session = self._call(
            "retrieve_checkout_session",
            lambda: self._stripe.v1.checkout.sessions.retrieve(session_id),
            session_id=session_id,
        )
        return session_info(session)

    def expire_checkout_session(self, session_id: str) -> CheckoutSessionInfo:
        """Expire an open session so it can no longer be paid."""
        session = self._call(
            "expire_checkout_session",
            lambda: self._stripe.v1.checkout.sessions.expire(session_id),
            session_id=session_id,
        )
        return session_info(session)

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
        return link_info(link)

    def retrieve_payment_link(self, link_id: str) -> PaymentLinkInfo:
        link = self._call(
            "retrieve_payment_link",
            lambda: self._stripe.v1.payment_links.retrieve(link_id),
            payment_link_id=link_id,
        )
        return link_info(link)

    def deactivate_payment_link(self, link_id: str) -> PaymentLinkInfo:
        """Switch a Payment Link off; safe to repeat."""
        params: PaymentLinkUpdateParams = {"active": False}
        link = self._call(
            "deactivate_payment_link",
            lambda: self._stripe.v1.payment_links.update(link_id, params),
            payment_link_id=link_id,
        )
        return link_info(link)

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
            metadata=metadata_of(intent.metadata),
            latest_charge_id=object_id(intent.latest_charge),
            failure_code=error.code if error else None,
            decline_code=error.decline_code if error else None,
            failure_message=error.message if error else None,
            latest_charge=charge_info(charge) if isinstance(charge, stripe.Charge) else None,
        )

    def confirm_off_session(
        self, *, payment_intent_id: str, payment_method_id: str, key: str
    ) -> stripe.PaymentIntent:
        """Confirm a PaymentIntent again with a saved card, the customer absent (off_session.py reads it)."""
        params: PaymentIntentConfirmParams = {"payment_method": payment_method_id, "off_session": True}
        return self._call(
            "confirm_off_session",
            lambda: self._stripe.v1.payment_intents.confirm(
                payment_intent_id, params, {"idempotency_key": key}
            ),
            payment_intent_id=payment_intent_id,
        )


# --- the app's gateway ---------------------------------------------------------

_EXTENSION = "stripe_gateway"


@dataclass(frozen=True)
class _Stripe:
    settings: StripeSettings
    gateway: StripeGateway | None


def init_app(app: Flask, settings: StripeSettings | None = None) -> None:
    """Build the app's Stripe settings and gateway once; `settings` (tests) instead of the app's config.

    No gateway without a secret key: `stripe_gateway()` then refuses with
    NOT_CONFIGURED, and jobs that need Stripe skip their work.
    """
    settings = settings or StripeSettings.from_config(app.config)
    gateway = StripeGateway(settings) if settings.secret_key else None
    app.extensions[_EXTENSION] = _Stripe(settings, gateway)


def _stripe(app: Flask | None) -> _Stripe:
    found: _Stripe = (app or current_app).extensions[_EXTENSION]
    return found


def stripe_settings(app: Flask | None = None) -> StripeSettings:
    """The app's Stripe settings, as built by `init_app`."""
    return _stripe(app).settings


def stripe_gateway_or_none(app: Flask | None = None) -> StripeGateway | None:
    """The app's Stripe gateway; None when no secret key is configured."""
    return _stripe(app).gateway


def stripe_gateway(app: Flask | None = None) -> StripeGateway:
    """The app's Stripe gateway; refuses (503, NOT_CONFIGURED) when no secret key is configured."""
    gateway = _stripe(app).gateway
    if gateway is None:
        raise StripeFailure("not_configured", NOT_CONFIGURED, 503)
    return gateway
