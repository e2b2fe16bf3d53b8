"""Confirm a failed PaymentIntent again, off-session, with the card it failed with: what Stripe answered.

The call itself is the gateway's (`StripeGateway.confirm_off_session`, our
idempotency key on it); this reads its answer into plain values. A card
decline is an answer, not a failure: Stripe executed the charge and saved its
402 under our key, so the caller records it. Anything else (network, rate
limit, Stripe's 5xx, a refusal of the request itself) stays a `StripeFailure`.
"""

from __future__ import annotations

from dataclasses import dataclass

from recovery.payments.gateway import StripeFailure, StripeGateway

# Stripe's code for a card that needs its holder (3-D Secure) when they are not there.
AUTHENTICATION_REQUIRED = "authentication_required"


class OffSessionOutcome:
    SUCCEEDED = "succeeded"
    # Stripe took it but has not settled it (some cards and banks): the webhook says how it ends.
    PROCESSING = "processing"
    DECLINED = "declined"
    REQUIRES_ACTION = "requires_action"


@dataclass(frozen=True)
class OffSessionResult:
    """What one off-session confirmation did."""

    outcome: str
    payment_intent_id: str
    intent_status: str | None
    code: str | None = None
    decline_code: str | None = None
    message: str | None = None

    @property
    def reason(self) -> str | None:
        """The most specific code: Stripe's decline_code, else the error code."""
        return self.decline_code or self.code


_OUTCOMES = {
    "succeeded": OffSessionOutcome.SUCCEEDED,
    "processing": OffSessionOutcome.PROCESSING,
    "requires_capture": OffSessionOutcome.SUCCEEDED,
}


def confirm_off_session(
    gateway: StripeGateway, *, payment_intent_id: str, payment_method_id: str, key: str
) -> OffSessionResult:
    """Charge the saved card once; the same key makes a repeat Stripe's first answer.

    https://docs.stripe.com/api/payment_intents/confirm: `off_session=true` says
    the customer is not present, so Stripe declines with `authentication_required`
    (https://docs.stripe.com/declines/codes) instead of waiting for a challenge.
    """
    try:
        intent = gateway.confirm_off_session(
            payment_intent_id=payment_intent_id, payment_method_id=payment_method_id, key=key
        )
    except StripeFailure as failure:
        if failure.kind != "card_error":
            raise
        outcome = (
            OffSessionOutcome.REQUIRES_ACTION
            if AUTHENTICATION_REQUIRED in (failure.code, failure.decline_code)
            else OffSessionOutcome.DECLINED
        )
        return OffSessionResult(
            outcome,
            payment_intent_id,
            "requires_payment_method",
            code=failure.code,
            decline_code=failure.decline_code,
            message=failure.message,
        )
    status = str(intent.status)
    return OffSessionResult(_OUTCOMES.get(status, OffSessionOutcome.REQUIRES_ACTION), str(intent.id), status)
