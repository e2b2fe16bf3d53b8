"""Saved cards charged off-session in the sandbox, through stripe-python over HTTP, as Stripe answers."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

CARDS = {
    "visa": "4242424242424242",
    "insufficient": "4000000000009995",
    "customer_fail": "4000000000000341",
    "auth_once": "4000002500003155",
    "auth_always": "4000002760003184",
    "declined": "4000000000000002",
}


def saved_card(client: stripe.StripeClient, number: str) -> tuple[str, str]:
    """A Customer and a card PaymentMethod attached to it: (customer id, payment method id)."""
    customer = client.v1.customers.create({"email": "ada@example.com", "name": "Ada"})
    pm = client.v1.payment_methods.create(
        {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2040}}  # type: ignore[typeddict-item]
    )
    client.v1.payment_methods.attach(pm.id, {"customer": customer.id})
    return customer.id, pm.id


def failed_intent(client: stripe.StripeClient, number: str) -> tuple[str, str, str]:
    """The merchant's own off-session charge of a saved card that declines: (intent, customer, pm)."""
    customer_id, pm_id = saved_card(client, number)
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.create(
            {
                "amount": 4200,
                "currency": "usd",
                "customer": customer_id,
                "payment_method": pm_id,
                "confirm": True,
                "off_session": True,
            }
        )
    intent = client.v1.payment_intents.list({"customer": customer_id}).data[0]
    return intent.id, customer_id, pm_id


def confirm(client: stripe.StripeClient, intent_id: str, pm_id: str, key: str | None = None) -> Any:
    options = {"idempotency_key": key} if key else {}
    return client.v1.payment_intents.confirm(
        intent_id,
        {"payment_method": pm_id, "off_session": True},
        options,  # type: ignore[arg-type]
    )


def events_of(client: stripe.StripeClient, type_: str) -> list[Any]:
    return list(client.v1.events.list({"type": type_, "limit": 100}).data)


def test_a_failed_off_session_intent_carries_its_customer_and_reusable_card(stripe_client):
    intent_id, customer_id, pm_id = failed_intent(stripe_client, CARDS["insufficient"])
    intent = stripe_client.v1.payment_intents.retrieve(intent_id)
    assert intent.status == "requires_payment_method"
    assert intent.customer == customer_id and intent.payment_method == pm_id
    error = intent.last_payment_error
    assert error is not None
    assert (error.code, error.decline_code) == ("card_declined", "insufficient_funds")
    assert error.payment_method is not None and error.payment_method.id == pm_id
    assert error.payment_method.customer == customer_id
    [event] = events_of(stripe_client, "payment_intent.payment_failed")
    sent = event.data.object
    assert sent["id"] == intent_id and sent["customer"] == customer_id
    assert sent["last_payment_error"]["decline_code"] == "insufficient_funds"
    assert sent["last_payment_error"]["payment_method"]["id"] == pm_id


def test_insufficient_funds_declines_each_retry_with_stripes_402(stripe_client):
    intent_id, _customer, pm_id = failed_intent(stripe_client, CARDS["insufficient"])
    with pytest.raises(stripe.CardError) as declined:
        confirm(stripe_client, intent_id, pm_id)
    assert declined.value.code == "card_declined"
    assert declined.value.error is not None and declined.value.error.decline_code == "insufficient_funds"
    body = declined.value.json_body or {}
    assert body["error"]["payment_intent"]["status"] == "requires_payment_method"
    assert body["error"]["payment_method"]["id"] == pm_id
    assert len(events_of(stripe_client, "payment_intent.payment_failed")) == 2


def test_0341_attaches_then_every_charge_fails(stripe_client):
    intent_id, customer_id, pm_id = failed_intent(stripe_client, CARDS["customer_fail"])
    assert stripe_client.v1.payment_methods.retrieve(pm_id).customer == customer_id
    for _ in range(2):
        with pytest.raises(stripe.CardError) as declined:
            confirm(stripe_client, intent_id, pm_id)
        assert declined.value.error is not None and declined.value.error.decline_code == "generic_decline"


def test_0002_cannot_even_be_attached(stripe_client):
    customer = stripe_client.v1.customers.create({"email": "a@example.com"})
    pm = stripe_client.v1.payment_methods.create(
        {"type": "card", "card": {"number": CARDS["declined"]}}  # type: ignore[typeddict-item]
    )
    with pytest.raises(stripe.CardError):
        stripe_client.v1.payment_methods.attach(pm.id, {"customer": customer.id})


def test_3184_needs_authentication_on_every_off_session_try(stripe_client):
    intent_id, _customer, pm_id = failed_intent(stripe_client, CARDS["auth_always"])
    with pytest.raises(stripe.CardError) as declined:
        confirm(stripe_client, intent_id, pm_id)
    assert declined.value.code == "authentication_required"
    body = declined.value.json_body or {}
    # Stripe: an off-session PaymentIntent that fails for SCA is left requires_payment_method.
    assert body["error"]["payment_intent"]["status"] == "requires_payment_method"
    assert body["error"]["payment_intent"]["last_payment_error"]["code"] == "authentication_required"
    # On-session the customer is asked instead: requires_action, no charge.
    on_session = stripe_client.v1.payment_intents.confirm(intent_id, {"payment_method": pm_id})
    assert on_session.status == "requires_action" and on_session.next_action is not None


def test_3155_authenticated_when_saved_then_succeeds_off_session(stripe_client):
    customer_id, pm_id = saved_card(stripe_client, CARDS["auth_once"])
    intent = stripe_client.v1.payment_intents.create(
        {
            "amount": 1500,
            "currency": "eur",
            "customer": customer_id,
            "payment_method": pm_id,
            "confirm": True,
            "off_session": True,
        }
    )
    assert intent.status == "succeeded" and intent.amount_received == 1500
    # Never saved, it needs the cardholder: off-session that is authentication_required.
    customer = stripe_client.v1.customers.create({"email": "b@example.com"})
    unsaved = stripe_client.v1.payment_methods.create(
        {"type": "card", "card": {"number": CARDS["auth_once"]}}  # type: ignore[typeddict-item]
    )
    lone = stripe_client.v1.payment_intents.create(
        {"amount": 1500, "currency": "eur", "customer": customer.id}
    )
    with pytest.raises(stripe.CardError) as declined:
        confirm(stripe_client, lone.id, unsaved.id)
    assert declined.value.code == "authentication_required"


def test_a_retry_that_succeeds_charges_once_and_cannot_be_confirmed_again(stripe_client):
    intent_id, customer_id, _pm = failed_intent(stripe_client, CARDS["insufficient"])
    good = stripe_client.v1.payment_methods.create(
        {"type": "card", "card": {"number": CARDS["visa"]}}  # type: ignore[typeddict-item]
    )
    stripe_client.v1.payment_methods.attach(good.id, {"customer": customer_id})
    paid = confirm(stripe_client, intent_id, good.id, key="retry-1-0")
    assert paid.status == "succeeded" and paid.amount_received == 4200
    # Same key, same params: Stripe's first answer again, no second charge.
    again = confirm(stripe_client, intent_id, good.id, key="retry-1-0")
    assert again.id == paid.id and again.latest_charge == paid.latest_charge
    with pytest.raises(stripe.InvalidRequestError) as refused:
        confirm(stripe_client, intent_id, good.id, key="retry-1-1")
    assert refused.value.code == "payment_intent_unexpected_state"
    assert "already succeeded" in str(refused.value.user_message)
    charges = stripe_client.v1.charges.list({"payment_intent": intent_id}).data
    assert [c.status for c in charges].count("succeeded") == 1
    [succeeded] = events_of(stripe_client, "payment_intent.succeeded")
    assert succeeded.data.object["id"] == intent_id


def test_a_declined_retry_is_replayed_for_its_key_and_a_key_with_other_params_is_refused(stripe_client):
    intent_id, _customer, pm_id = failed_intent(stripe_client, CARDS["insufficient"])
    with pytest.raises(stripe.CardError) as first:
        confirm(stripe_client, intent_id, pm_id, key="retry-2-0")
    with pytest.raises(stripe.CardError) as second:
        confirm(stripe_client, intent_id, pm_id, key="retry-2-0")
    assert (first.value.json_body or {})["error"]["charge"] == (second.value.json_body or {})["error"][
        "charge"
    ]
    assert len(events_of(stripe_client, "payment_intent.payment_failed")) == 2  # the failure + one retry
    with pytest.raises(stripe.IdempotencyError):
        stripe_client.v1.payment_intents.confirm(
            intent_id, {"payment_method": pm_id}, {"idempotency_key": "retry-2-0"}
        )


def test_a_card_of_another_customer_or_an_unknown_one_is_refused(stripe_client):
    intent_id, _customer, _pm = failed_intent(stripe_client, CARDS["insufficient"])
    _other, foreign_pm = saved_card(stripe_client, CARDS["visa"])
    with pytest.raises(stripe.InvalidRequestError) as foreign:
        confirm(stripe_client, intent_id, foreign_pm)
    assert foreign.value.param == "payment_method"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        confirm(stripe_client, intent_id, "pm_nope")
    assert unknown.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as nothing:
        confirm(stripe_client, "pi_nope", foreign_pm)
    assert nothing.value.http_status == 404


def test_stripes_test_payment_methods_work_by_name(stripe_client):
    customer = stripe_client.v1.customers.create({"email": "c@example.com"})
    pm = stripe_client.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer.id})
    assert pm.id.startswith("pm_") and pm.id != "pm_card_chargeCustomerFail" and pm.customer == customer.id
    assert pm.card is not None and pm.card.last4 == "0341"


# --- bad input, answered as Stripe answers it ----------------------------------------------------


def test_bad_requests_are_refused_with_stripes_codes(stripe_client):
    customer = stripe_client.v1.customers.create({"email": "d@example.com"})
    bare = stripe_client.v1.payment_intents.create(
        {"amount": 900, "currency": "usd", "customer": customer.id}
    )
    with pytest.raises(stripe.InvalidRequestError) as no_card:
        stripe_client.v1.payment_intents.confirm(bare.id, {"off_session": True})
    assert no_card.value.code == "payment_intent_unexpected_state" and "missing a payment method" in str(
        no_card.value.user_message
    )
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        stripe_client.v1.payment_intents.confirm(bare.id, {"payment_method": "pm_card_visa", "colour": "red"})  # type: ignore[typeddict-unknown-key]
    assert unknown.value.code == "parameter_unknown" and unknown.value.param == "colour"
    with pytest.raises(stripe.InvalidRequestError) as not_confirming:
        stripe_client.v1.payment_intents.create({"amount": 900, "currency": "usd", "off_session": True})
    assert not_confirming.value.param == "off_session"
    with pytest.raises(stripe.InvalidRequestError) as bad_currency:
        stripe_client.v1.payment_intents.create({"amount": 900, "currency": "xyz"})
    assert bad_currency.value.param == "currency"
    with pytest.raises(stripe.CardError) as bad_number:
        stripe_client.v1.payment_methods.create(
            {"type": "card", "card": {"number": "4111111111111112"}}  # type: ignore[typeddict-item]
        )
    assert bad_number.value.code == "incorrect_number"
    with pytest.raises(stripe.InvalidRequestError) as no_customer:
        stripe_client.v1.payment_methods.attach("pm_card_visa", {"customer": "cus_nope"})
    assert no_customer.value.code == "resource_missing" and no_customer.value.param == "customer"


def test_a_card_used_once_without_a_customer_cannot_be_used_again(stripe_client):
    pm = stripe_client.v1.payment_methods.create(
        {"type": "card", "card": {"number": CARDS["visa"]}}  # type: ignore[typeddict-item]
    )
    paid = stripe_client.v1.payment_intents.create(
        {"amount": 900, "currency": "usd", "payment_method": pm.id, "confirm": True}
    )
    assert paid.status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError) as again:
        stripe_client.v1.payment_intents.create(
            {"amount": 900, "currency": "usd", "payment_method": pm.id, "confirm": True}
        )
    assert "may not be used again" in str(again.value.user_message)
