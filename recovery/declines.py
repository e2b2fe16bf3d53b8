"""Stripe's decline codes in the merchant's words.

Staff read "The customer's bank refused: not enough money on the card", not
`insufficient_funds`. The codes and their meaning follow Stripe's list
(https://docs.stripe.com/declines/codes); the code itself stays on the page
in small print, for a search in Stripe's dashboard or a call to the bank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Decline:
    """A decline code told in a short title (for a list) and a sentence (for a detail page)."""

    code: str
    title: str
    sentence: str

    @property
    def category(self) -> str:
        return category(self.code)


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


# --- categories: what a recovery should do about each code ---------------------------
#
# retry_later: the same card may work again (funds, limits, issuer or processing trouble);
# customer_action: the customer must pay with other details (expired, wrong number, CVC or
# PIN, authentication, a card that cannot pay this); do_not_contact: lost, stolen, picked
# up, fraudulent, a security violation or the merchant's own block list: never retried,
# never messaged unless a rule says otherwise; unknown: anything else, or no code.
RETRY_LATER: Final = "retry_later"
CUSTOMER_ACTION: Final = "customer_action"
DO_NOT_CONTACT: Final = "do_not_contact"
UNKNOWN: Final = "unknown"
CATEGORIES: Final = (RETRY_LATER, CUSTOMER_ACTION, DO_NOT_CONTACT, UNKNOWN)

CATEGORY_LABELS: Final = {
    RETRY_LATER: "Card may work again",
    CUSTOMER_ACTION: "Customer must update card",
    DO_NOT_CONTACT: "Do not contact",
    UNKNOWN: "Unknown reason",
}
CATEGORY_SENTENCES: Final = {
    RETRY_LATER: "The same card may pay if it is tried again later (money, limits or the bank's trouble).",
    CUSTOMER_ACTION: "The customer has to pay with other card details; trying the same card again will fail.",
    DO_NOT_CONTACT: "The card was reported lost or stolen, or the payment looks fraudulent: "
    "the card is never tried again and, unless a rule says so, the customer is not contacted.",
    UNKNOWN: "The decline gives no usable reason.",
}

_CATEGORY_CODES: Final = {
    RETRY_LATER: (
        "approve_with_id",
        "call_issuer",
        "card_declined",
        "card_velocity_exceeded",
        "do_not_honor",
        "generic_decline",
        "insufficient_funds",
        "issuer_not_available",
        "no_action_taken",
        "processing_error",
        "reenter_transaction",
        "try_again_later",
        "withdrawal_count_limit_exceeded",
    ),
    CUSTOMER_ACTION: (
        "authentication_required",
        "card_not_supported",
        "currency_not_supported",
        "do_not_try_again",
        "expired_card",
        "incorrect_cvc",
        "incorrect_number",
        "incorrect_pin",
        "incorrect_zip",
        "invalid_account",
        "invalid_amount",
        "invalid_cvc",
        "invalid_expiry_month",
        "invalid_expiry_year",
        "invalid_number",
        "invalid_pin",
        "new_account_information_available",
        "not_permitted",
        "offline_pin_required",
        "online_or_offline_pin_required",
        "pin_try_exceeded",
        "revocation_of_all_authorizations",
        "revocation_of_authorization",
        "service_not_allowed",
        "stop_payment_order",
        "transaction_not_allowed",
    ),
    DO_NOT_CONTACT: (
        "fraudulent",
        "lost_card",
        "merchant_blacklist",
        "pickup_card",
        "restricted_card",
        "security_violation",
        "stolen_card",
    ),
    # duplicate_transaction: a retry could charge twice; testmode_decline: a test card.
    UNKNOWN: ("duplicate_transaction", "testmode_decline"),
}
CODE_CATEGORY: Final = {code: cat for cat, codes in _CATEGORY_CODES.items() for code in codes}
assert set(CODE_CATEGORY) == set(_DECLINES), set(CODE_CATEGORY) ^ set(_DECLINES)


def category(code: str | None) -> str:
    """The code's category; a code not in Stripe's list, or none, is `unknown`."""
    return CODE_CATEGORY.get(code or "", UNKNOWN)


def codes_in(name: str) -> tuple[str, ...]:
    """The known codes of a category (for SQL: `failure_code IN (...)`; `unknown` also takes the rest)."""
    return _CATEGORY_CODES[name]


def category_label(name: str) -> str:
    return CATEGORY_LABELS.get(name, name)
