"""What a payment request must satisfy, and what we send Stripe with it.

Shared by the Checkout Session and Payment Link services (and the API's and
dashboard's callers of both): the refusals of a transaction that cannot be
charged, the client's metadata checked against Stripe's limits, and our own
metadata, references and idempotency keys.
"""

from __future__ import annotations

import hashlib
from typing import Any

from recovery.models import Organization, Transaction, TransactionStatus
from recovery.money import card_charge_problem
from recovery.refusals import Refused
from recovery.transactions.validation import deceptive_character, deceptive_message, has_control_characters

# Stripe's limits on metadata: 50 keys, keys up to 40 characters, values up to 500.
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
# Keys we set ourselves; a client's metadata may not overwrite them.
RESERVED_METADATA = frozenset({"organization_id", "transaction_id", "transaction_ref", "attempt_id"})
# Nothing can be collected for these any more.
CLOSED_STATUSES = frozenset(
    {TransactionStatus.RECOVERED, TransactionStatus.CANCELLED, TransactionStatus.REFUNDED}
)


class PaymentRefused(Refused):
    """The payment cannot be asked for as requested; `field` names the input at fault, if any."""

    # What the payments API has always answered for a refusal with no status of its own.
    kind = "invalid_request"


def digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def idempotency_key(organization_id: int, subject: str, action: str) -> str:
    """Our Stripe idempotency key: readable prefix, hashed action (clients' keys can be long)."""
    return f"recovery-org{organization_id}-{subject}-{digest(action)}"


def clean_metadata(raw: Any) -> dict[str, str]:
    """Validate a client's metadata against Stripe's limits and our reserved keys."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PaymentRefused("metadata must be an object of string keys and values.", field="metadata")
    if len(raw) > METADATA_MAX_KEYS - len(RESERVED_METADATA):
        raise PaymentRefused(
            f"metadata may have at most {METADATA_MAX_KEYS - len(RESERVED_METADATA)} keys.", field="metadata"
        )
    cleaned: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key or len(key) > METADATA_KEY_MAX or "[" in key or "]" in key:
            raise PaymentRefused(
                f"metadata key {str(key)[:50]!r} must be 1 to {METADATA_KEY_MAX} characters, "
                "without brackets.",
                field="metadata",
            )
        if key in RESERVED_METADATA:
            raise PaymentRefused(f"metadata key {key!r} is set by Recovery itself.", field="metadata")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise PaymentRefused(f"metadata value for {key!r} must be a string or number.", field="metadata")
        text = str(value)
        if has_control_characters(key) or has_control_characters(text):
            # Stripe's form encoding would fail on a lone surrogate, after our reservation.
            raise PaymentRefused(
                "metadata keys and values must not contain control characters.", field="metadata"
            )
        deceptive = deceptive_character(key) or deceptive_character(text, joiners=True)
        if deceptive:
            raise PaymentRefused(f"metadata {key!r}: {deceptive_message(deceptive)}", field="metadata")
        if len(text) > METADATA_VALUE_MAX:
            raise PaymentRefused(
                f"metadata value for {key!r} is longer than {METADATA_VALUE_MAX} characters.",
                field="metadata",
            )
        cleaned[key] = text
    return cleaned


def our_metadata(transaction: Transaction, attempt_id: int | None) -> dict[str, str]:
    metadata = {
        "organization_id": str(transaction.organization_id),
        "transaction_id": str(transaction.id),
        "transaction_ref": transaction.transaction_ref,
    }
    if attempt_id is not None:
        metadata["attempt_id"] = str(attempt_id)
    return metadata


def client_reference_id(transaction: Transaction, attempt_id: int | None = None) -> str:
    """Name organization, transaction and attempt in Stripe's one free-text reference field."""
    reference = f"recovery:{transaction.organization_id}:{transaction.id}"
    return f"{reference}:{attempt_id}" if attempt_id is not None else reference


def check_collectable(transaction: Transaction) -> None:
    if transaction.status == TransactionStatus.CANCELLED:
        raise PaymentRefused(
            f"Transaction {transaction.transaction_ref} is closed: nothing is collected for it. "
            "Reopen it to ask for a payment.",
            status=409,
        )
    if transaction.status in CLOSED_STATUSES:
        raise PaymentRefused(
            f"Transaction {transaction.transaction_ref} is {transaction.status}; "
            "there is nothing to collect.",
            status=409,
        )


def check_amount(transaction: Transaction, amount: int | None, currency: str | None) -> None:
    """Refuse an amount Stripe cannot charge, or an amount or currency that is not the transaction's."""
    problem = card_charge_problem(transaction.amount, transaction.currency)
    if problem:
        # Stripe would refuse it; asking it would only record a failed attempt.
        raise PaymentRefused(problem, field="amount")
    if amount is not None and amount != transaction.amount:
        raise PaymentRefused(
            f"amount {amount} does not match the transaction's amount {transaction.amount}.",
            field="amount",
        )
    if currency is not None and currency.lower() != transaction.currency:
        raise PaymentRefused(
            f"currency {currency!r} does not match the transaction's currency {transaction.currency!r}.",
            field="currency",
        )


def product_name(organization: Organization | None, transaction: Transaction) -> str:
    merchant = organization.name if organization else "Payment"
    return f"{merchant} — payment {transaction.transaction_ref}"
