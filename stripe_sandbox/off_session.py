"""Saved cards charged later: PaymentMethods, attaching them to a Customer, and off-session PaymentIntents.

What a merchant's own billing does before a failure reaches us (a saved card
charged off-session, `POST /v1/payment_intents` with `confirm=true` and
`off_session=true`), and what a card retry does after it
(`POST /v1/payment_intents/{id}/confirm` with `off_session=true` and the
`payment_method` the PaymentIntent failed with). Stripe's behaviour, from
https://docs.stripe.com/payments/save-and-reuse and
https://docs.stripe.com/testing#authentication-and-setup:

- a failed confirmation answers 402 `card_error` whose body carries the
  PaymentIntent, now `requires_payment_method` with `last_payment_error`
  (code, decline_code, the whole PaymentMethod), and sends
  `payment_intent.payment_failed`;
- a card that needs authentication, confirmed off-session, fails the same
  way with code and decline_code `authentication_required` (Stripe support:
  "Off-session PaymentIntents that fail confirmation due to SCA requirements
  have a status of requires_payment_method"); confirmed on-session it waits in
  `requires_action` for the customer instead;
- a PaymentIntent that succeeded cannot be confirmed again
  (`payment_intent_unexpected_state`).

Test cards (the numbers, or Stripe's `pm_card_*` test PaymentMethods):
4242424242424242 succeeds; 4000000000009995 declines insufficient_funds;
4000000000000341 attaches, then every charge declines generic_decline;
4000002500003155 needs authentication once, when saved (attaching it stands
for the SetupIntent the customer authenticated: the sandbox has no challenge
page), then succeeds off-session; 4000002760003184 needs authentication on
every payment, so off-session it always fails authentication_required;
4000000000000002 declines, even when attached.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Response, g

from stripe_sandbox import objects
from stripe_sandbox.api import amount as amount_param
from stripe_sandbox.api import answer, bp, idempotent, json_response, optional_str, params, retrieve
from stripe_sandbox.api import currency as currency_param
from stripe_sandbox.context import Sandbox, current
from stripe_sandbox.errors import StripeError, invalid, missing, no_such
from stripe_sandbox.forms import as_bool, as_int, as_mapping, as_str, check_known, metadata
from stripe_sandbox.objects import PRIVATE, public
from stripe_sandbox.payments import Decline, card_error, emit, normalize_card


@dataclass(frozen=True)
class SavedCard:
    """How a test card behaves once saved: attach refused, charges declined, authentication needed."""

    brand: str
    country: str
    decline: Decline | None = None
    attach_decline: Decline | None = None
    # "always": every payment needs the cardholder; "until_saved": only until saved with authentication.
    authentication: str | None = None


_INSUFFICIENT = Decline("card_declined", "insufficient_funds", "Your card has insufficient funds.")
_GENERIC = Decline("card_declined", "generic_decline", "Your card was declined.")
AUTHENTICATION_REQUIRED = Decline(
    "authentication_required",
    "authentication_required",
    "Your card was declined. This transaction requires authentication.",
)
SAVED_CARDS = {
    "4242424242424242": SavedCard("visa", "US"),
    "4000000000009995": SavedCard("visa", "US", decline=_INSUFFICIENT),
    "4000000000000341": SavedCard("visa", "US", decline=_GENERIC),
    "4000000000000002": SavedCard("visa", "US", decline=_GENERIC, attach_decline=_GENERIC),
    "4000002500003155": SavedCard("visa", "IE", authentication="until_saved"),
    "4000002760003184": SavedCard("visa", "DE", authentication="always"),
}
# Stripe's test PaymentMethods, usable wherever a PaymentMethod id is (each use makes a new one).
TEST_PAYMENT_METHODS = {
    "pm_card_visa": "4242424242424242",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeCustomerFail": "4000000000000341",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_authenticationRequiredSetupForOffSession": "4000002500003155",
    "pm_card_authenticationRequired": "4000002760003184",
}
# The blueprint these endpoints join (imported by app.py so that they are registered).
ROUTES_ON = bp
# Where a PaymentIntent may be confirmed from (Stripe's state machine).
CONFIRMABLE = frozenset({"requires_payment_method", "requires_confirmation", "requires_action"})
_INTENT_PARAMS = {
    "amount",
    "currency",
    "customer",
    "payment_method",
    "confirm",
    "off_session",
    "metadata",
    "description",
    "receipt_email",
    "payment_method_types",
    "error_on_requires_action",
    "return_url",
    "expand",
}
_CONFIRM_PARAMS = {
    "payment_method",
    "off_session",
    "receipt_email",
    "error_on_requires_action",
    "return_url",
    "payment_method_types",
    "expand",
}


# --- PaymentMethods ---


def new_payment_method(
    sandbox: Sandbox, number: str, exp_month: int, exp_year: int, **billing: Any
) -> dict[str, Any]:
    """Store a card PaymentMethod for a test card number (not attached to anyone)."""
    number = normalize_card(number)
    card = SAVED_CARDS.get(number)
    if card is None:
        raise card_error("Your card number is incorrect.", "incorrect_number", param="card[number]")
    fields = {
        "brand": card.brand,
        "last4": number[-4:],
        "exp_month": exp_month,
        "exp_year": exp_year,
        "country": card.country,
        "funding": "credit",
    }
    pm = objects.payment_method(
        id=objects.new_id("pm_"),
        now=sandbox.store.now(),
        card=fields,
        email=billing.get("email"),
        name=billing.get("name"),
    )
    pm[PRIVATE] = {"number": number, "authenticated": False, "used": False}
    return sandbox.store.put(pm)


def find_payment_method(sandbox: Sandbox, pm_id: str, param: str) -> dict[str, Any]:
    """A stored PaymentMethod, or a fresh one for one of Stripe's `pm_card_*` test ids."""
    if pm_id in TEST_PAYMENT_METHODS:
        return new_payment_method(sandbox, TEST_PAYMENT_METHODS[pm_id], 12, _five_years(sandbox))
    pm = sandbox.store.get(pm_id, "payment_method")
    if pm is None:
        raise no_such("PaymentMethod", pm_id, param=param)
    return pm


def _five_years(sandbox: Sandbox) -> int:
    return datetime.fromtimestamp(sandbox.store.now(), UTC).year + 5


def _saved(pm: dict[str, Any]) -> SavedCard:
    return SAVED_CARDS[pm[PRIVATE]["number"]]


@bp.post("/payment_methods")
@idempotent
def create_payment_method() -> dict[str, Any]:
    sandbox, values = current(), params()
    check_known(values, {"type", "card", "billing_details", "metadata", "expand"})
    if values.get("type") != "card":
        raise invalid("type", "The sandbox makes only PaymentMethods of type card.")
    card = as_mapping(values.get("card"), "card")
    if card.get("number") in (None, ""):
        raise missing("card[number]")
    billing = as_mapping(values.get("billing_details"), "billing_details")
    pm = new_payment_method(
        sandbox,
        as_str(card["number"], "card[number]"),
        as_int(card["exp_month"], "card[exp_month]", minimum=1, maximum=12) if card.get("exp_month") else 12,
        as_int(card["exp_year"], "card[exp_year]") if card.get("exp_year") else _five_years(sandbox),
        email=billing.get("email") or None,
        name=billing.get("name") or None,
    )
    pm["metadata"] = metadata(values.get("metadata"))
    return answer(sandbox.store.put(pm), values)


@bp.get("/payment_methods/<object_id>")
def get_payment_method(object_id: str) -> Response:
    try:
        return json_response(200, answer(retrieve("payment_method", object_id)))
    except StripeError as error:
        return json_response(error.status, error.body())


@bp.post("/payment_methods/<object_id>/attach")
@idempotent
def attach_payment_method(object_id: str) -> dict[str, Any]:
    """Save the card on a Customer; a card that needs authentication once is authenticated here."""
    sandbox, values = current(), params()
    check_known(values, {"customer", "expand"})
    customer_id = optional_str(values, "customer")
    if not customer_id:
        raise missing("customer")
    if sandbox.store.get(customer_id, "customer") is None:
        raise no_such("customer", customer_id, param="customer")
    pm = find_payment_method(sandbox, object_id, "id")
    if pm["customer"] and pm["customer"] != customer_id:
        raise StripeError(
            400, "The payment method you provided has already been attached to a customer.", param="customer"
        )
    if pm[PRIVATE]["used"] and not pm["customer"]:
        raise _used_once()
    card = _saved(pm)
    if card.attach_decline:
        decline = card.attach_decline
        raise card_error(decline.message, decline.code, decline_code=decline.decline_code)
    pm["customer"] = customer_id
    pm[PRIVATE]["authenticated"] = card.authentication == "until_saved"
    return answer(sandbox.store.put(pm), values)


def _used_once() -> StripeError:
    return invalid(
        "payment_method",
        "The provided PaymentMethod was previously used with a PaymentIntent without Customer attachment, "
        "shared with a connected account without Customer attachment, or was detached from a Customer. "
        "It may not be used again. To use a PaymentMethod multiple times, you must attach it to a Customer "
        "first.",
    )


# --- PaymentIntents ---


@bp.post("/payment_intents")
@idempotent
def create_payment_intent() -> dict[str, Any]:
    sandbox, values = current(), params()
    check_known(values, _INTENT_PARAMS)
    customer_id = optional_str(values, "customer")
    if customer_id and sandbox.store.get(customer_id, "customer") is None:
        raise no_such("customer", customer_id, param="customer")
    confirm = as_bool(values["confirm"], "confirm") if values.get("confirm") not in (None, "") else False
    if values.get("off_session") not in (None, "") and not confirm:
        raise invalid("off_session", "You can only pass `off_session` when `confirm=true`.")
    intent = objects.payment_intent(
        now=sandbox.store.now(),
        amount=amount_param(values.get("amount"), "amount"),
        currency=currency_param(values.get("currency"), "currency"),
        customer_id=customer_id,
        metadata=metadata(values.get("metadata")),
        description=optional_str(values, "description"),
    )
    intent["receipt_email"] = optional_str(values, "receipt_email")
    pm_id = optional_str(values, "payment_method")
    if pm_id:
        intent["payment_method"] = find_payment_method(sandbox, pm_id, "payment_method")["id"]
        intent["status"] = "requires_confirmation"
    sandbox.store.put(intent)
    if confirm:
        return confirm_intent(sandbox, intent, values)
    return answer(intent, values)


@bp.post("/payment_intents/<object_id>/confirm")
@idempotent
def confirm_payment_intent(object_id: str) -> dict[str, Any]:
    sandbox, values = current(), params()
    check_known(values, _CONFIRM_PARAMS)
    return confirm_intent(sandbox, retrieve("payment_intent", object_id), values)


def confirm_intent(sandbox: Sandbox, intent: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Charge the PaymentIntent to its PaymentMethod, off-session when asked; raise the decline (402)."""
    if intent["status"] not in CONFIRMABLE:
        raise _unexpected_state(intent)
    pm_id = optional_str(values, "payment_method") or intent["payment_method"]
    if not pm_id:
        raise StripeError(
            400,
            "You cannot confirm this PaymentIntent because it's missing a payment method. To confirm the "
            "PaymentIntent with a payment method, pass the payment_method parameter.",
            code="payment_intent_unexpected_state",
            payment_intent=public(intent),
        )
    pm = find_payment_method(sandbox, pm_id, "payment_method")
    _check_owner(pm, intent)
    off_session = (
        as_bool(values["off_session"], "off_session")
        if values.get("off_session") not in (None, "")
        else False
    )
    receipt_email = optional_str(values, "receipt_email")
    if receipt_email:
        intent["receipt_email"] = receipt_email
    intent["payment_method"] = pm["id"]
    pm[PRIVATE]["used"] = True
    sandbox.store.put(pm)
    card = _saved(pm)
    needs_authentication = card.authentication == "always" or (
        card.authentication == "until_saved" and not pm[PRIVATE]["authenticated"]
    )
    if needs_authentication and not off_session:
        return _requires_action(sandbox, intent, values)
    decline = AUTHENTICATION_REQUIRED if needs_authentication else card.decline
    return _charge(sandbox, intent, pm, decline, values)


def _check_owner(pm: dict[str, Any], intent: dict[str, Any]) -> None:
    """Stripe's rules on whose card a PaymentIntent may use."""
    if pm["customer"] and not intent["customer"]:
        raise invalid(
            "payment_method",
            "The provided PaymentMethod was previously attached to a Customer. To use a PaymentMethod that "
            "is attached to a Customer, you must also pass the ID of the Customer in the `customer` "
            "parameter.",
        )
    if pm["customer"] and pm["customer"] != intent["customer"]:
        raise invalid(
            "payment_method",
            f"The provided PaymentMethod belongs to a different Customer than the one on this PaymentIntent "
            f"({intent['customer']}).",
        )
    if not pm["customer"] and pm[PRIVATE]["used"]:
        raise _used_once()


def _unexpected_state(intent: dict[str, Any]) -> StripeError:
    if intent["status"] == "succeeded":
        message = (
            "You cannot confirm this PaymentIntent because it has already succeeded after being "
            "previously confirmed."
        )
    else:
        message = (
            f"This PaymentIntent's payment_method could not be updated because it has a status of "
            f"{intent['status']}. You may only update the payment_method of a PaymentIntent with one of the "
            "following statuses: requires_payment_method, requires_confirmation, requires_action."
        )
    return StripeError(400, message, code="payment_intent_unexpected_state", payment_intent=public(intent))


def _requires_action(sandbox: Sandbox, intent: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """On-session, a card that needs the cardholder waits for them (3-D Secure through Stripe.js)."""
    intent.update(
        status="requires_action",
        next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}},
    )
    sandbox.store.put(intent)
    emit(sandbox, "payment_intent.requires_action", intent, **_request())
    return answer(intent, values)


def _request() -> dict[str, str | None]:
    return {"request_id": g.get("request_id"), "idempotency_key": g.get("idempotency_key")}


def _charge(
    sandbox: Sandbox,
    intent: dict[str, Any],
    pm: dict[str, Any],
    decline: Decline | None,
    values: dict[str, Any],
) -> dict[str, Any]:
    """One charge of the saved card: succeeded, or failed and raised as Stripe's 402."""
    now = sandbox.store.now()
    card = {key: pm["card"][key] for key in ("brand", "last4", "exp_month", "exp_year", "country", "funding")}
    billing = pm["billing_details"]
    failure = (
        {"code": decline.code, "decline_code": decline.decline_code, "message": decline.message}
        if decline
        else None
    )
    charge = objects.charge(
        now=now,
        intent=intent,
        payment_method=pm["id"],
        card=card,
        email=billing.get("email"),
        name=billing.get("name"),
        failure=failure,
    )
    sandbox.store.put(charge)
    intent.update(latest_charge=charge["id"], next_action=None)
    if decline is None:
        intent.update(status="succeeded", amount_received=intent["amount"], last_payment_error=None)
        sandbox.store.put(intent)
        emit(sandbox, "payment_intent.succeeded", intent, **_request())
        return answer(intent, values)
    intent.update(
        status="requires_payment_method",
        last_payment_error={
            "type": "card_error",
            "charge": charge["id"],
            "code": decline.code,
            "decline_code": decline.decline_code,
            "message": decline.message,
            "doc_url": f"https://stripe.com/docs/error-codes/{decline.code.replace('_', '-')}",
            "payment_method": public(pm),
        },
    )
    sandbox.store.put(intent)
    emit(sandbox, "payment_intent.payment_failed", intent, **_request())
    raise card_error(
        decline.message,
        decline.code,
        decline_code=decline.decline_code,
        charge=charge["id"],
        payment_intent=public(intent),
        payment_method=public(pm),
    )
