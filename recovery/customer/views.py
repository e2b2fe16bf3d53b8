"""The pages customers see on our domain: the pay page of their link, and Stripe's way back.

Public: no login. A GET never creates anything at Stripe (mail scanners open
links); only the CSRF-protected "Pay now" POST does. Nothing here fulfils a
payment: only Stripe's signed webhook does that. Pages show only what the
token or Stripe itself vouches for.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, g, redirect, render_template, request, url_for
from flask_limiter import RateLimitExceeded, RouteLimit
from sqlalchemy import select
from werkzeug.wrappers import Response

from recovery.boundary import read_only
from recovery.extensions import csrf, db, limiter
from recovery.logs import get_logger
from recovery.messaging.content import format_expiry, writing_locale
from recovery.models import (
    AttemptStatus,
    CheckoutSession,
    Organization,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.payments import checkout as payments
from recovery.payments.gateway import StripeFailure, StripeGateway, stripe_gateway, stripe_settings
from recovery.payments.pages import transaction_of_link
from recovery.payments.rules import PaymentRefused
from recovery.payments.stripe_objects import CheckoutSessionInfo
from recovery.recoveries import lifecycle, paying

bp = Blueprint("customer", __name__, url_prefix="/pay")

log = get_logger("recovery.customer")

HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
PAID = frozenset({TransactionStatus.RECOVERED, TransactionStatus.REFUNDED})
CUSTOMER_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; "
    "form-action 'self' {stripe}; frame-ancestors 'none'; style-src 'self' 'nonce-{nonce}'"
)


@dataclass(frozen=True)
class Receipt:
    merchant: str
    amount: int
    currency: str
    transaction_ref: str
    paid_at: datetime | None
    card_brand: str | None = None
    card_last4: str | None = None


@bp.before_request
def brand_nonce() -> None:
    g.style_nonce = secrets.token_urlsafe(16)


@bp.after_request
def branded_csp(response: Response) -> Response:
    """Allow one inline <style> (the merchant's colour) by nonce, and the POST's redirect to Stripe."""
    nonce = g.get("style_nonce")
    if nonce:
        response.headers["Content-Security-Policy"] = CUSTOMER_CSP.format(
            nonce=nonce, stripe=" ".join(_checkout_origins())
        )
    return response


def _checkout_origins() -> list[str]:
    """Where the Pay now form may lead: Stripe Checkout (or the sandbox the app is pointed at)."""
    origins = ["https://checkout.stripe.com"]
    base = urlsplit(stripe_settings().api_base)
    if base.scheme and base.netloc:
        origins.append(f"{base.scheme}://{base.netloc}")
    return origins


def _brand(organization: Organization | None, transaction: Transaction | None = None) -> dict[str, Any]:
    color = organization.brand_color if organization else ""
    return {
        "organization": organization,
        "brand_color": color if HEX_COLOR.fullmatch(color or "") else "#1f6feb",
        "style_nonce": g.get("style_nonce", ""),
        "locale": _page_locale(transaction),
    }


def _page_locale(transaction: Transaction | None) -> str:
    """The locale of the page's amounts and dates: the pages are in English, so English ones."""
    return writing_locale(transaction.customer_locale if transaction else None, None)


def _attempt_or_404(token: str) -> tuple[RecoveryAttempt, Transaction, Organization]:
    attempt = lifecycle.get_by_token(db.session, token)
    if attempt is None:
        abort(404)
    organization = db.session.get(Organization, attempt.organization_id)
    assert organization is not None
    return attempt, attempt.transaction, organization


def _paid_receipt(transaction: Transaction, organization: Organization) -> Receipt:
    return Receipt(
        organization.name,
        transaction.amount,
        transaction.currency,
        transaction.transaction_ref,
        transaction.recovered_at,
    )


def _closed(attempt: RecoveryAttempt, now: datetime) -> bool:
    return not attempt.is_active or now >= attempt.expires_at


def _expiry(attempt: RecoveryAttempt, transaction: Transaction, organization: Organization) -> str:
    """The link's expiry as the customer's messages state it (their zone, its UTC offset)."""
    return format_expiry(
        attempt.expires_at,
        _page_locale(transaction),
        country=transaction.customer_country,
        phone=transaction.customer_phone,
        organization_zone=organization.timezone,
    )


def _html(body: str, status: int) -> Response:
    # werkzeug's Response defaults to text/plain: the customer would see the page's source.
    return Response(body, status, mimetype="text/html")


def _render_state(
    attempt: RecoveryAttempt, transaction: Transaction, organization: Organization, now: datetime
) -> Response | None:
    """The page for a link that cannot be paid any more (paid, or ended), else None."""
    if transaction.status in PAID or attempt.status == AttemptStatus.COMPLETED:
        body = render_template(
            "customer/already_paid.html",
            receipt=_paid_receipt(transaction, organization),
            **_brand(organization, transaction),
        )
        return _html(body, 200)
    paid = paying.paid_session(db.session, transaction.id)
    if paid is not None:
        # Paid at Stripe, not yet confirmed by its webhook: never a second session.
        receipt = Receipt(
            organization.name, paid.amount, paid.currency, transaction.transaction_ref, paid.completed_at
        )
        body = render_template(
            "customer/already_paid.html",
            receipt=receipt,
            confirming=True,
            **_brand(organization, transaction),
        )
        return _html(body, 200)
    if _closed(attempt, now):
        status = attempt.status if not attempt.is_active else AttemptStatus.EXPIRED
        body = render_template(
            "customer/link_closed.html",
            status=status,
            transaction=transaction,
            **_brand(organization, transaction),
        )
        return _html(body, 410)
    return None


@bp.get("/<token>")
def pay(token: str) -> Any:
    """Show what is owed and a Pay now button; record that the link was opened. Nothing at Stripe."""
    attempt, transaction, organization = _attempt_or_404(token)
    now = utcnow()
    ended = _render_state(attempt, transaction, organization, now)
    if ended is not None:
        return ended
    lifecycle.record_click(db.session, attempt, now=now)
    return render_template(
        "customer/pay.html",
        attempt=attempt,
        transaction=transaction,
        error=None,
        expiry=_expiry(attempt, transaction, organization),
        **_brand(organization, transaction),
    )


@bp.post("/<token>")
def checkout(token: str) -> Any:
    """Open (or reuse) the attempt's Checkout Session and send the customer to Stripe."""
    attempt, transaction, organization = _attempt_or_404(token)
    now = utcnow()
    ended = _render_state(attempt, transaction, organization, now)
    if ended is not None:
        return ended
    settings = stripe_settings()
    try:
        record = paying.checkout_for_attempt(
            db.session,
            stripe_gateway(),
            attempt,
            base_url=settings.base_url,
            expires_in=settings.checkout_expires,
            now=now,
        )
    except (StripeFailure, PaymentRefused) as error:
        # The page answers it (the service kept what a refused reservation leaves).
        # Only an outage or a rate limit passes; anything else Stripe refused will be
        # refused again, and telling the customer to retry would have them retry forever.
        passing = isinstance(error, StripeFailure) and error.retryable
        (log.warning if passing else log.error)(
            "customer_checkout_failed", attempt_id=attempt.id, error=error.message, retryable=passing
        )
        ended = _render_state(attempt, transaction, organization, now)  # paid meanwhile, in another tab
        if ended is not None:
            return ended
        page = render_template(
            "customer/pay.html",
            attempt=attempt,
            transaction=transaction,
            error=(
                "We could not open the payment page just now. Please try again in a minute."
                if passing
                else "This payment cannot be taken online at the moment. Nothing was charged."
            ),
            error_contact=not passing,
            expiry=_expiry(attempt, transaction, organization),
            **_brand(organization, transaction),
        )
        return page, 503 if passing else 502
    if not record.url:
        abort(503)
    return redirect(record.url, code=303)


@bp.get("/success")
def success() -> Any:
    """Confirm what Stripe says about the session; nothing is fulfilled here (the webhook does that)."""
    session_id = request.args.get("session_id", "")[:255]
    token = request.args.get("t", "")[:64]
    record = None
    if session_id:
        record = db.session.scalar(
            select(CheckoutSession).where(CheckoutSession.stripe_session_id == session_id)
        )
    attempt = lifecycle.get_by_token(db.session, token) if token else None
    if record is not None and token and (attempt is None or record.attempt_id != attempt.id):
        record = None  # a session that is not this link's: show nothing of it
    if record is None:
        signed = request.args.get("l", "")[:200]
        return _link_success(session_id, signed) if signed and not token else _unknown()
    organization = db.session.get(Organization, record.organization_id)
    transaction = db.session.get(Transaction, record.transaction_id)
    assert organization is not None and transaction is not None
    state, receipt = "processing", None
    try:
        gateway = stripe_gateway()
        with _stripe_lookups():
            info = gateway.retrieve_checkout_session(session_id)
            # Belt and braces: Stripe's own copy must name this organization and transaction.
            if info.id != session_id or info.metadata.get("transaction_id") != str(transaction.id):
                return _unknown()
            payments.follow_status(record, info)  # only the session record: the webhook fulfils
            state, receipt = _confirmation(gateway, info, organization, transaction)
    except RateLimitExceeded:
        log.warning("customer_success_lookups_limited", session_id=session_id)
    except StripeFailure as error:
        log.warning("customer_success_check_failed", session_id=session_id, error=error.message)
    return _success_page(state, receipt, transaction, organization, token if attempt is not None else None)


def _link_success(session_id: str, signed: str) -> Any:
    """A session opened from one of our Payment Links: Stripe made it, so its copy is all there is.

    Stripe is asked only when the URL carries our signature of the transaction
    (the link's success URL does), so a made-up address costs no Stripe call.
    """
    transaction_id = transaction_of_link(stripe_settings().link_keys, signed)
    transaction = db.session.get(Transaction, transaction_id) if transaction_id is not None else None
    if transaction is None or not payments.STRIPE_SESSION_ID.fullmatch(session_id):
        return _unknown()
    organization = db.session.get(Organization, transaction.organization_id)
    assert organization is not None
    state, receipt = "processing", None
    try:
        gateway = stripe_gateway()
        with _stripe_lookups():
            info = gateway.retrieve_checkout_session(session_id)
        if info.payment_link_id is None or info.metadata.get("transaction_id") != str(transaction.id):
            return _unknown()
        state, receipt = _confirmation(gateway, info, organization, transaction)
    except RateLimitExceeded:
        log.warning("customer_success_lookups_limited", session_id=session_id)
    except StripeFailure as error:
        if error.code == "resource_missing":
            return _unknown()
        log.warning("customer_success_check_failed", session_id=session_id, error=error.message)
    return _success_page(state, receipt, transaction, organization, None)


def _stripe_lookups() -> RouteLimit:
    """Count a success page's Stripe lookups against the client's per-minute allowance.

    The page is public and its address sits in every paying customer's
    browser: reloading it must not let anyone spend our Stripe rate limit,
    which all merchants share. Over the limit the page says "confirming".
    """
    return limiter.limit(f"{stripe_settings().success_lookups_per_minute}/minute")


def _success_page(
    state: str,
    receipt: Receipt | None,
    transaction: Transaction,
    organization: Organization,
    token: str | None,
) -> str:
    return render_template(
        "customer/success.html",
        state=state,
        receipt=receipt,
        transaction=transaction,
        token=token,
        **_brand(organization, transaction),
    )


def _unknown() -> str:
    return render_template("customer/success.html", state="unknown", receipt=None, **_brand(None))


def _confirmation(
    gateway: StripeGateway, info: CheckoutSessionInfo, organization: Organization, transaction: Transaction
) -> tuple[str, Receipt | None]:
    """The page's state: paid, with a receipt, once Stripe says so; until then processing."""
    if info.payment_status not in ("paid", "no_payment_required"):
        return "processing", None
    receipt = Receipt(
        organization.name,
        info.amount_total if info.amount_total is not None else transaction.amount,
        info.currency or transaction.currency,
        transaction.transaction_ref,
        None,
    )
    if info.payment_intent_id:
        receipt = _with_card(gateway, info.payment_intent_id, receipt)
    return "paid", receipt


def _with_card(gateway: StripeGateway, payment_intent_id: str, receipt: Receipt) -> Receipt:
    """Add the paying card's last four digits and the charge date, when Stripe has them (one request)."""
    try:
        charge = gateway.retrieve_payment_intent(payment_intent_id).latest_charge
    except StripeFailure:
        return receipt
    if charge is None:
        return receipt
    return Receipt(
        receipt.merchant,
        receipt.amount,
        receipt.currency,
        receipt.transaction_ref,
        charge.created_at,
        charge.card_brand,
        charge.card_last4,
    )


@bp.get("/cancel")
@read_only
def cancel() -> Any:
    """Nothing was charged; offer to try again when we know whose link it was."""
    token = request.args.get("t", "")[:64]
    attempt = lifecycle.get_by_token(db.session, token) if token else None
    organization = db.session.get(Organization, attempt.organization_id) if attempt else None
    retry_url = None
    if attempt is not None and not _closed(attempt, utcnow()) and attempt.transaction.status not in PAID:
        retry_url = url_for("customer.pay", token=attempt.token)
    transaction = attempt.transaction if attempt else None
    return render_template("customer/cancel.html", retry_url=retry_url, **_brand(organization, transaction))


@bp.get("/<token>/unsubscribe")
@read_only
def unsubscribe_confirm(token: str) -> Any:
    """Ask before opting out: link checkers and mail scanners follow GET links."""
    _attempt, transaction, organization = _attempt_or_404(token)
    return render_template(
        "customer/unsubscribe.html",
        done=False,
        transaction=transaction,
        token=token,
        **_brand(organization, transaction),
    )


@bp.post("/<token>/unsubscribe")
def unsubscribe(token: str) -> Any:
    """Stop emailing this customer for this organization (one click, idempotent)."""
    attempt, transaction, organization = _attempt_or_404(token)
    lifecycle.unsubscribe_email(db.session, attempt, now=utcnow())
    return render_template(
        "customer/unsubscribe.html",
        done=True,
        transaction=transaction,
        token=token,
        **_brand(organization, transaction),
    )


# RFC 8058: mail clients POST "List-Unsubscribe=One-Click" with no cookie or CSRF
# token; the link's token is the credential and opting out is all it can do.
csrf.exempt(unsubscribe)
