"""What happens to Checkout Sessions: paying, declining, expiring, opening one from a Payment Link.

Plain functions over the store, shared by the API (test helpers, expire) and the
hosted pages, so a card behaves the same whichever way it is entered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stripe_sandbox import objects
from stripe_sandbox.context import Sandbox
from stripe_sandbox.errors import StripeError
from stripe_sandbox.objects import PRIVATE, public
from stripe_sandbox.webhooks import endpoints


@dataclass(frozen=True)
class Decline:
    code: str
    decline_code: str
    message: str


@dataclass(frozen=True)
class Card:
    brand: str
    country: str
    funding: str
    decline: Decline | None = None


# Stripe's test cards (SPEC.md). 3184 needs 3-D Secure: with no challenge UI here it declines.
TEST_CARDS = {
    "4242424242424242": Card("visa", "US", "credit"),
    "4000000000000002": Card(
        "visa", "US", "credit", Decline("card_declined", "generic_decline", "Your card was declined.")
    ),
    "4000000000009995": Card(
        "visa",
        "US",
        "credit",
        Decline("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    ),
    # Attaches to a Customer, then every charge fails (off_session.py); entered in Checkout it declines.
    "4000000000000341": Card(
        "visa", "US", "credit", Decline("card_declined", "generic_decline", "Your card was declined.")
    ),
    # Needs authentication once: the hosted page stands in for the challenge, so it pays.
    "4000002500003155": Card("visa", "IE", "credit"),
    "4000002760003184": Card(
        "visa",
        "DE",
        "credit",
        Decline(
            "authentication_required",
            "authentication_required",
            "Your card was declined. This transaction requires authentication.",
        ),
    ),
}


class NotPayable(Exception):
    """The session is no longer open (expired or complete): the status says which."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def card_error(message: str, code: str, param: str | None = None, **extra: Any) -> StripeError:
    return StripeError(402, message, type="card_error", code=code, param=param, **extra)


def normalize_card(number: str) -> str:
    return re.sub(r"[\s-]", "", number)


def find_card(number: str) -> Card:
    card = TEST_CARDS.get(normalize_card(number))
    if card is None:
        raise card_error("Your card number is incorrect.", "incorrect_number", param="number")
    return card


def emit(
    sandbox: Sandbox,
    type: str,
    obj: dict[str, Any],
    *,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Store an event and queue one delivery per webhook endpoint; call inside a transaction."""
    targets = endpoints(sandbox.config, sandbox.store)
    event = objects.event(
        now=sandbox.store.now(),
        type=type,
        obj=obj,
        request_id=request_id,
        idempotency_key=idempotency_key,
        pending_webhooks=len(targets),
    )
    sandbox.store.put(event)
    for url, secret in targets:
        sandbox.store.enqueue_delivery(event["id"], url, secret)
    sandbox.dispatcher.wake()
    return event


def expire(sandbox: Sandbox, session: dict[str, Any], **request: str | None) -> dict[str, Any]:
    """Move an open session to `expired` and announce it once."""
    session.update(status="expired", url=None)
    sandbox.store.put(session)
    emit(sandbox, "checkout.session.expired", session, **request)
    return session


def expire_due_sessions(sandbox: Sandbox) -> None:
    """Expire every open session whose `expires_at` has passed on the sandbox clock."""
    store = sandbox.store
    with store.transaction():
        for session in store.expired_open_sessions(store.now()):
            expire(sandbox, session)


def open_session(sandbox: Sandbox, session_id: str) -> dict[str, Any] | None:
    """Return the session, first expiring it if its time has come."""
    store = sandbox.store
    with store.transaction():
        session = store.get(session_id, "checkout.session")
        if session and session["status"] == "open" and session["expires_at"] <= store.now():
            expire(sandbox, session)
        return session


def customer_email(sandbox: Sandbox, session: dict[str, Any]) -> str | None:
    """The email Checkout prefills: the session's `customer_email`, else its Customer's."""
    if session["customer_email"]:
        return str(session["customer_email"])
    customer = sandbox.store.get(session["customer"], "customer") if session["customer"] else None
    return customer["email"] if customer else None


@dataclass
class Attempt:
    """The outcome of one payment attempt: the updated session, and the decline if there was one."""

    session: dict[str, Any]
    intent: dict[str, Any]
    error: StripeError | None


def pay(
    sandbox: Sandbox,
    session_id: str,
    *,
    card_number: str,
    exp_month: int,
    exp_year: int,
    email: str | None,
    name: str | None = None,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> Attempt:
    """Charge the session's amount to a test card, as Checkout does when the customer clicks Pay.

    The first attempt creates the session's PaymentIntent; later attempts reuse it.
    A decline is committed too (failed charge, `payment_intent.payment_failed`) and
    returned, not raised, and leaves the session open for another try.
    """
    card = find_card(card_number)
    store = sandbox.store
    request = {"request_id": request_id, "idempotency_key": idempotency_key}
    with store.transaction():
        session = open_session(sandbox, session_id)
        if session is None:
            raise LookupError(session_id)
        if session["status"] != "open":
            raise NotPayable(session["status"])
        if session["payment_link"] and not link_active(sandbox, session["payment_link"]):
            # Its limit was reached or it was switched off while this page was open.
            raise NotPayable("link_deactivated")
        now = store.now()
        today = datetime.fromtimestamp(now, UTC)  # the sandbox's clock, which tests can move
        if exp_year < today.year:
            raise card_error(
                "Your card's expiration year is invalid.", "invalid_expiry_year", param="exp_year"
            )
        if (exp_year, exp_month) < (today.year, today.month):
            raise card_error(
                "Your card's expiration month is invalid.", "invalid_expiry_month", param="exp_month"
            )
        email = email or customer_email(sandbox, session) or "customer@example.com"
        intent = store.get(session["payment_intent"], "payment_intent") if session["payment_intent"] else None
        if intent is None:
            intent_data = session[PRIVATE]["payment_intent_data"]
            intent = objects.payment_intent(
                now=now,
                amount=session["amount_total"],
                currency=session["currency"],
                customer_id=session["customer"],
                metadata=intent_data.get("metadata", {}),
                description=intent_data.get("description"),
            )
        number = normalize_card(card_number)
        payment_method = objects.new_id("pm_")
        card_fields = {
            "brand": card.brand,
            "last4": number[-4:],
            "exp_month": exp_month,
            "exp_year": exp_year,
            "country": card.country,
            "funding": card.funding,
        }
        failure = (
            {
                "code": card.decline.code,
                "decline_code": card.decline.decline_code,
                "message": card.decline.message,
            }
            if card.decline
            else None
        )
        charge = objects.charge(
            now=now,
            intent=intent,
            payment_method=payment_method,
            card=card_fields,
            email=email,
            name=name,
            failure=failure,
        )
        store.put(charge)
        intent.update(latest_charge=charge["id"], payment_method=payment_method)
        session["payment_intent"] = intent["id"]
        if card.decline:
            intent.update(
                status="requires_payment_method",
                last_payment_error={
                    "type": "card_error",
                    "charge": charge["id"],
                    "code": card.decline.code,
                    "decline_code": card.decline.decline_code,
                    "message": card.decline.message,
                    "doc_url": f"https://stripe.com/docs/error-codes/{card.decline.code.replace('_', '-')}",
                    # Stripe sends the whole PaymentMethod here, billing details included.
                    "payment_method": objects.payment_method(
                        id=payment_method, now=now, card=card_fields, email=email, name=name
                    ),
                },
            )
            store.put(intent)
            store.put(session)
            emit(sandbox, "payment_intent.payment_failed", intent, **request)
            error = card_error(
                card.decline.message,
                card.decline.code,
                decline_code=card.decline.decline_code,
                charge=charge["id"],
                payment_intent=public(intent),
            )
            return Attempt(session=session, intent=intent, error=error)

        intent.update(status="succeeded", amount_received=intent["amount"], last_payment_error=None)
        session.update(
            status="complete",
            payment_status="paid",
            url=None,
            customer_details={
                "address": dict.fromkeys(("city", "country", "line1", "line2", "postal_code", "state")),
                "email": email,
                "name": name,
                "phone": None,
                "tax_exempt": "none",
                "tax_ids": [],
                "business_name": None,
                "individual_name": None,
            },
        )
        store.put(intent)
        store.put(session)
        if session["payment_link"]:
            _count_completion(sandbox, session["payment_link"])
        emit(sandbox, "payment_intent.succeeded", intent, **request)
        emit(sandbox, "checkout.session.completed", session, **request)
        return Attempt(session=session, intent=intent, error=None)


def link_active(sandbox: Sandbox, link_id: str) -> bool:
    link = sandbox.store.get(link_id, "payment_link")
    return link is not None and bool(link["active"])


def _count_completion(sandbox: Sandbox, link_id: str) -> None:
    """Count a completed session against the link's limit; reaching it deactivates the link."""
    link = sandbox.store.get(link_id, "payment_link")
    if link is None or not link["restrictions"]:
        return
    completed = link["restrictions"]["completed_sessions"]
    completed["count"] += 1
    if completed["count"] >= completed["limit"]:
        link["active"] = False
    sandbox.store.put(link)


def success_redirect(session: dict[str, Any]) -> str | None:
    """The URL Checkout sends the customer to after paying, with the session id filled in."""
    url = session["success_url"]
    return url.replace("{CHECKOUT_SESSION_ID}", session["id"]) if url else None


def session_for_link(sandbox: Sandbox, link: dict[str, Any]) -> dict[str, Any]:
    """Open a new Checkout Session for a Payment Link, as visiting the link's URL does."""
    store = sandbox.store
    now = store.now()
    redirect = link["after_completion"].get("redirect") or {}
    session = objects.checkout_session(
        now=now,
        public_url=sandbox.config.public_url,
        items=[{**item, "id": objects.new_id("li_")} for item in link[PRIVATE]["line_items"]],
        customer_id=None,
        customer_email=None,
        client_reference_id=None,
        # Stripe copies the link's metadata onto the sessions it creates.
        metadata=dict(link["metadata"]),
        success_url=redirect.get("url"),
        cancel_url=None,
        expires_at=now + 24 * 3600,
        locale=None,
        payment_link=link["id"],
        payment_intent_data={
            "metadata": dict(link["payment_intent_data"]["metadata"] or {}),
            "description": link["payment_intent_data"]["description"],
        },
    )
    store.put(session)
    return session
