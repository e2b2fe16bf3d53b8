"""Failed off-session payments the demo's data names, present in every sandbox that starts.

`recovery/demo.py` (which imports nothing of the sandbox, nor the sandbox of it)
gives three demo transactions these ids, so that their campaigns' card retries
reach real sandbox objects when `make run` starts the stack: a card short of
funds (declines again), a card that was short yesterday and pays today (the
saved card is now good: the retry succeeds and the webhook recovers it), and a
card that always needs its holder (the campaign skips to its message). They
are made without events: they stand for failures from before the demo began.
`POST /_sandbox/reset` removes them like everything else; a restart brings them back.
"""

from __future__ import annotations

from datetime import UTC, datetime

from stripe_sandbox import objects
from stripe_sandbox.objects import PRIVATE, public
from stripe_sandbox.store import Store

# (payment intent, customer, payment method, card, failure code, decline code, amount, currency, email)
DEMO_FAILURES = (
    ("pi_demo_retry_short", "cus_demo_retry_short", "pm_demo_retry_short", "4000000000009995",
     "card_declined", "insufficient_funds", 4200, "usd", "ada.retry@example.com"),
    ("pi_demo_retry_paid", "cus_demo_retry_paid", "pm_demo_retry_paid", "4242424242424242",
     "card_declined", "insufficient_funds", 2599, "eur", "hans.retry@example.com"),
    ("pi_demo_retry_auth", "cus_demo_retry_auth", "pm_demo_retry_auth", "4000002760003184",
     "authentication_required", "authentication_required", 1850, "gbp", "chloe.retry@example.com"),
)  # fmt: skip


def install(store: Store) -> None:
    """Create the demo's failed PaymentIntents, their Customers and saved cards, once."""
    with store.transaction():
        for intent_id, customer_id, pm_id, number, code, decline, amount, currency, email in DEMO_FAILURES:
            if store.get(intent_id, "payment_intent") is not None:
                continue
            now = store.now() - 25 * 3600  # they failed yesterday
            customer = objects.customer(
                now=now, email=email, name=None, phone=None, description="demo", metadata={}
            )
            customer["id"] = customer_id
            store.put(customer)
            pm = _card(pm_id, customer_id, number, now, email)
            store.put(pm)
            intent = objects.payment_intent(
                now=now,
                amount=amount,
                currency=currency,
                customer_id=customer_id,
                metadata={},
                description=None,
            )
            intent.update(
                id=intent_id,
                client_secret=f"{intent_id}_secret_demo",
                payment_method=pm_id,
                receipt_email=email,
                last_payment_error={
                    "type": "card_error",
                    "code": code,
                    "decline_code": decline,
                    "message": "Your card was declined.",
                    "payment_method": public(pm),
                },
            )
            store.put(intent)


def _card(pm_id: str, customer_id: str, number: str, now: int, email: str) -> dict[str, object]:
    year = datetime.fromtimestamp(now, UTC).year + 4
    card = {
        "brand": "visa",
        "last4": number[-4:],
        "exp_month": 12,
        "exp_year": year,
        "country": "US",
        "funding": "credit",
    }
    pm = objects.payment_method(id=pm_id, now=now, card=card, email=email, name=None)
    pm["customer"] = customer_id
    pm[PRIVATE] = {"number": number, "authenticated": False, "used": True}
    return pm
