"""Stripe's decline codes in the merchant's words.

Staff read "The customer's bank refused: not enough money on the card", not
`insufficient_funds`. The codes and their meaning follow Stripe's list
(https://docs.stripe.com/declines/codes); the code itself stays on the page
in small print, for a search in Stripe's dashboard or a call to the bank.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decline:
    """A decline code told in a short title (for a list) and a sentence (for a detail page)."""

    code: str
    title: str
    sentence: str


_UNKNOWN_REASON = "The bank declined the card without giving a reason."
_ASK_ANOTHER_CARD = "The customer needs to pay with another card."

_DECLINES: dict[str, tuple[str, str]] = {
    "approve_with_id": (
        "Not authorized",
        "The bank could not authorize the payment. Trying again often works.",
    ),
    "authentication_required": (
        "Needs authentication",
        "The bank wants the customer to confirm the payment (3-D Secure); the payment page asks them to.",
    ),
    "call_issuer": ("Declined by the bank", _UNKNOWN_REASON + " The customer should call their bank."),
    "card_declined": ("Declined", "The card was declined."),
    "card_not_supported": (
        "Card not accepted",
        "This card cannot be used for this kind of purchase. " + _ASK_ANOTHER_CARD,
    ),
    "card_velocity_exceeded": (
        "Card limit reached",
        "The customer has reached the balance or credit limit of their card.",
    ),
    "currency_not_supported": (
        "Currency not supported",
        "The card cannot pay in this currency. " + _ASK_ANOTHER_CARD,
    ),
    "do_not_honor": ("Declined by the bank", _UNKNOWN_REASON + " The customer should call their bank."),
    "do_not_try_again": ("Declined, do not retry", _UNKNOWN_REASON + " Charging this card again will fail."),
    "duplicate_transaction": (
        "Looks like a duplicate",
        "The same amount on the same card was charged moments before.",
    ),
    "expired_card": ("Card expired", "The card has expired. " + _ASK_ANOTHER_CARD),
    "fraudulent": ("Suspected fraud", "Stripe suspects this payment is fraudulent and blocked it."),
    "generic_decline": ("Declined", _UNKNOWN_REASON),
    "incorrect_cvc": ("Wrong security code", "The card's security code (CVC) was wrong."),
    "incorrect_number": ("Wrong card number", "The card number was wrong."),
    "incorrect_pin": ("Wrong PIN", "The PIN was wrong."),
    "incorrect_zip": ("Wrong postal code", "The postal code did not match the card's."),
    "insufficient_funds": (
        "Insufficient funds",
        "There was not enough money on the card. Trying again after payday often works.",
    ),
    "invalid_account": (
        "Card account invalid",
        "The card, or the account it belongs to, is not valid. " + _ASK_ANOTHER_CARD,
    ),
    "invalid_amount": ("Amount refused", "The bank refused the amount, or it is more than the card allows."),
    "invalid_cvc": ("Wrong security code", "The card's security code (CVC) was wrong."),
    "invalid_expiry_month": ("Wrong expiry date", "The card's expiry month was wrong."),
    "invalid_expiry_year": ("Wrong expiry date", "The card's expiry year was wrong."),
    "invalid_number": ("Wrong card number", "The card number was not valid."),
    "invalid_pin": ("Wrong PIN", "The PIN was wrong."),
    "issuer_not_available": (
        "Bank unreachable",
        "The card's bank could not be reached. Trying again often works.",
    ),
    "lost_card": ("Card reported lost", "The card was reported lost. " + _ASK_ANOTHER_CARD),
    "merchant_blacklist": ("On your block list", "The payment matches an entry on your Stripe block list."),
    "new_account_information_available": (
        "Card details changed",
        "The card or its account has new details. " + _ASK_ANOTHER_CARD,
    ),
    "no_action_taken": ("Declined by the bank", _UNKNOWN_REASON + " The customer should call their bank."),
    "not_permitted": ("Not permitted", "The bank does not permit this payment."),
    "offline_pin_required": ("PIN required", "The card needs a PIN, which online payments cannot take."),
    "online_or_offline_pin_required": (
        "PIN required",
        "The card needs a PIN, which online payments cannot take.",
    ),
    "pickup_card": (
        "Card blocked",
        "The card cannot be used (it may have been reported lost or stolen). " + _ASK_ANOTHER_CARD,
    ),
    "pin_try_exceeded": ("Too many PIN tries", "The PIN was entered wrongly too many times."),
    "processing_error": (
        "Processing error",
        "An error occurred while the card was processed. Trying again often works.",
    ),
    "reenter_transaction": ("Try again", "The bank could not process the payment. Trying again often works."),
    "restricted_card": (
        "Card restricted",
        "The card cannot be used for this payment (it may have been reported lost or stolen). "
        + _ASK_ANOTHER_CARD,
    ),
    "revocation_of_all_authorizations": (
        "Payments stopped",
        "The customer told their bank to stop all payments to you.",
    ),
    "revocation_of_authorization": ("Payment stopped", "The customer told their bank to stop this payment."),
    "security_violation": ("Declined by the bank", _UNKNOWN_REASON + " The customer should call their bank."),
    "service_not_allowed": (
        "Declined by the bank",
        _UNKNOWN_REASON + " The customer should call their bank.",
    ),
    "stolen_card": ("Card reported stolen", "The card was reported stolen. " + _ASK_ANOTHER_CARD),
    "stop_payment_order": ("Payment stopped", "The customer told their bank to stop this payment."),
    "testmode_decline": ("Test card", "A Stripe test card was used; it never pays."),
    "transaction_not_allowed": ("Not allowed", "The bank does not allow this kind of payment on this card."),
    "try_again_later": ("Try again later", "The bank declined for now. Trying again later often works."),
    "withdrawal_count_limit_exceeded": (
        "Card limit reached",
        "The customer has reached the limit of their card.",
    ),
}


def describe(code: str | None) -> Decline | None:
    """The decline told in words; a code Stripe does not list is shown as a plain, humanised title."""
    if not code:
        return None
    known = _DECLINES.get(code)
    if known is not None:
        return Decline(code, *known)
    title = code.replace("_", " ").strip().capitalize() or code
    return Decline(code, title, "The payment failed with a code Stripe does not document as a decline.")
