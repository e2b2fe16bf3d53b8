"""Build Stripe objects from Stripe's own example of each resource (fixtures.json).

Every builder starts from a deep copy of the fixture, so an object always has
every top-level key Stripe's has, then sets what this request decides and nulls
out what does not apply to a card payment in test mode. Fields only the sandbox
needs (a session's line items, its PaymentIntent metadata) live under `_sandbox`
and never leave the process: `public()` strips them.
"""

from __future__ import annotations

import copy
import json
import secrets
import string
from functools import cache
from pathlib import Path
from typing import Any

from stripe_sandbox.config import API_VERSION

_ALPHABET = string.ascii_letters + string.digits
PRIVATE = "_sandbox"

# The currencies Stripe accepts for card payments (lower case, ISO 4217).
_CURRENCY_LIST = """
usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd bwp byn bzd
cad cdf chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp gel gip gmd gnf gtq gyd
hkd hnl htg huf idr ils inr isk jmd jod jpy kes kgs khr kmf krw kwd kyd kzt lak lbp lkr lrd lsl mad
mdl mga mkd mmk mnt mop mur mvr mwk mxn myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln
pyg qar ron rsd rub rwf sar sbd scr sek sgd shp sle sos srd std szl thb tjs tnd top try ttd twd tzs
uah ugx uyu uzs vnd vuv wst xaf xcd xof xpf yer zar zmw
"""
CURRENCIES = frozenset(_CURRENCY_LIST.split())
# Stripe's rules from https://docs.stripe.com/currencies.
# fmt: off
ZERO_DECIMAL = frozenset({
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
    "pyg", "rwf", "vnd", "vuv", "xaf", "xof", "xpf",
})
# fmt: on
# Stripe takes these in thousandths, but charges only whole tens of them.
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
# "Special cases": two-decimal in the API with the decimals always 00 (5 ISK is 500).
WHOLE_UNITS_ONLY = frozenset({"isk", "ugx"})
# "Minimum charge amount by currency", in minor units. The sandbox plays an
# account that settles in each charge's own currency: a currency without a row
# has no minimum beyond one chargeable step.
# fmt: off
MINIMUM_CHARGE = {
    "usd": 50, "aed": 200, "ars": 50, "aud": 50, "brl": 50, "cad": 50, "chf": 50,
    "cop": 50, "czk": 1500, "dkk": 250, "eur": 50, "gbp": 30, "hkd": 400,
    "huf": 17500, "idr": 50, "ils": 50, "inr": 50, "jpy": 50, "krw": 50,
    "mxn": 1000, "myr": 200, "nok": 300, "nzd": 50, "php": 50, "pln": 200,
    "ron": 200, "rub": 50, "sek": 300, "sgd": 50, "thb": 1000, "zar": 50,
}
# fmt: on


@cache
def _fixtures() -> dict[str, dict[str, Any]]:
    path = Path(__file__).with_name("fixtures.json")
    return json.loads(path.read_text(encoding="utf-8"))["resources"]  # type: ignore[no-any-return]


def fixture(kind: str) -> dict[str, Any]:
    """Return a fresh copy of Stripe's example object of this type."""
    return copy.deepcopy(_fixtures()[kind])


def fixture_keys(kind: str) -> frozenset[str]:
    return frozenset(_fixtures()[kind])


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """Return the object as the API shows it, without the sandbox's private fields."""
    return {k: v for k, v in obj.items() if k != PRIVATE}


def _address() -> dict[str, None]:
    return dict.fromkeys(("city", "country", "line1", "line2", "postal_code", "state"))


def customer(
    *,
    now: int,
    email: str | None,
    name: str | None,
    phone: str | None,
    description: str | None,
    metadata: dict[str, str],
) -> dict[str, Any]:
    obj = fixture("customer")
    obj.update(
        id=new_id("cus_", 14),
        created=now,
        email=email,
        name=name,
        phone=phone,
        description=description,
        metadata=metadata,
        address=None,
        currency=None,
        discount=None,
        shipping=None,
        invoice_prefix=new_id("", 8).upper(),
        invoice_settings={
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
    )
    return obj


def product(
    *, now: int, name: str, description: str | None, metadata: dict[str, str], active: bool
) -> dict[str, Any]:
    obj = fixture("product")
    obj.update(
        id=new_id("prod_", 14),
        created=now,
        updated=now,
        name=name,
        description=description,
        metadata=metadata,
        active=active,
        default_price=None,
        package_dimensions=None,
        type="service",
    )
    return obj


def price(
    *,
    now: int,
    product_id: str,
    currency: str,
    unit_amount: int,
    metadata: dict[str, str],
    nickname: str | None = None,
    lookup_key: str | None = None,
) -> dict[str, Any]:
    obj = fixture("price")
    obj.update(
        id=new_id("price_"),
        created=now,
        product=product_id,
        currency=currency,
        unit_amount=unit_amount,
        unit_amount_decimal=str(unit_amount),
        metadata=metadata,
        nickname=nickname,
        lookup_key=lookup_key,
        recurring=None,
        transform_quantity=None,
        custom_unit_amount=None,
        type="one_time",
    )
    return obj


def line_item(*, price_obj: dict[str, Any], description: str, quantity: int) -> dict[str, Any]:
    obj = fixture("item")
    amount = price_obj["unit_amount"] * quantity
    obj.update(
        id=new_id("li_"),
        price=price_obj,
        description=description,
        quantity=quantity,
        currency=price_obj["currency"],
        amount_subtotal=amount,
        amount_total=amount,
        amount_discount=0,
        amount_tax=0,
        metadata=None,
        adjustable_quantity=None,
    )
    return obj


def checkout_session(  # noqa: PLR0913 -- keyword-only, one per field of Stripe's object
    *,
    now: int,
    public_url: str,
    items: list[dict[str, Any]],
    customer_id: str | None,
    customer_email: str | None,
    client_reference_id: str | None,
    metadata: dict[str, str],
    success_url: str | None,
    cancel_url: str | None,
    expires_at: int,
    locale: str | None,
    payment_link: str | None,
    payment_intent_data: dict[str, Any],
) -> dict[str, Any]:
    obj = fixture("checkout.session")
    session_id = new_id("cs_test_", 58)
    amount = sum(item["amount_total"] for item in items)
    obj.update(
        id=session_id,
        created=now,
        expires_at=expires_at,
        amount_subtotal=amount,
        amount_total=amount,
        currency=items[0]["currency"],
        customer=customer_id,
        customer_email=customer_email,
        customer_creation=None if customer_id else "if_required",
        customer_details=None,
        client_reference_id=client_reference_id,
        metadata=metadata,
        success_url=success_url,
        cancel_url=cancel_url,
        locale=locale,
        payment_link=payment_link,
        payment_intent=None,  # current API versions create the PaymentIntent when the customer pays
        status="open",
        payment_status="unpaid",
        mode="payment",
        url=f"{public_url}/c/pay/{session_id}",
        after_expiration=None,
        automatic_tax={"enabled": False, "liability": None, "status": None, "provider": None},
        consent=None,
        consent_collection=None,
        custom_text={
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        invoice_creation={
            "enabled": False,
            "invoice_data": {
                "account_tax_ids": None,
                "custom_fields": None,
                "description": None,
                "footer": None,
                "issuer": None,
                "metadata": {},
                "rendering_options": None,
            },
        },
        payment_method_collection="if_required",
        payment_method_configuration_details=None,
        payment_method_options={"card": {"request_three_d_secure": "automatic"}},
        saved_payment_method_options=None,
        shipping_address_collection=None,
        shipping_cost=None,
        total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        ui_mode="hosted",
        adaptive_pricing={"enabled": False},
        discounts=[],
        collected_information=None,
        permissions=None,
        currency_conversion=None,
        managed_payments={"enabled": False},
    )
    obj[PRIVATE] = {"line_items": items, "payment_intent_data": payment_intent_data}
    return obj


def payment_link(
    *,
    public_url: str,
    items: list[dict[str, Any]],
    metadata: dict[str, str],
    limit: int | None,
    redirect_url: str | None,
    payment_intent_data: dict[str, Any],
) -> dict[str, Any]:
    obj = fixture("payment_link")
    link_id = new_id("plink_")
    after_completion: dict[str, Any] = (
        {"type": "redirect", "redirect": {"url": redirect_url}}
        if redirect_url
        else {"type": "hosted_confirmation", "hosted_confirmation": {"custom_message": None}}
    )
    obj.update(
        id=link_id,
        url=f"{public_url}/b/{link_id}",
        active=True,
        currency=items[0]["currency"],
        metadata=metadata,
        after_completion=after_completion,
        restrictions={"completed_sessions": {"count": 0, "limit": limit}} if limit else None,
        payment_intent_data={
            "capture_method": None,
            "description": payment_intent_data.get("description"),
            "metadata": payment_intent_data.get("metadata", {}),
            "setup_future_usage": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "transfer_group": None,
        },
        custom_text={
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        invoice_creation={
            "enabled": False,
            "invoice_data": {
                "account_tax_ids": None,
                "custom_fields": None,
                "description": None,
                "footer": None,
                "issuer": None,
                "metadata": {},
                "rendering_options": None,
            },
        },
        automatic_tax={"enabled": False, "liability": None},
        shipping_address_collection=None,
        subscription_data=None,
        transfer_data=None,
        managed_payments={"enabled": False},
        payment_method_options=None,
    )
    obj[PRIVATE] = {"line_items": items}
    return obj


def payment_intent(
    *,
    now: int,
    amount: int,
    currency: str,
    customer_id: str | None,
    metadata: dict[str, str],
    description: str | None,
) -> dict[str, Any]:
    obj = fixture("payment_intent")
    pi_id = new_id("pi_")
    obj.update(
        id=pi_id,
        created=now,
        amount=amount,
        currency=currency,
        customer=customer_id,
        metadata=metadata,
        description=description,
        client_secret=f"{pi_id}_secret_{new_id('', 25)}",
        status="requires_payment_method",
        amount_received=0,
        amount_details={"tip": {}},
        automatic_payment_methods=None,
        canceled_at=None,
        last_payment_error=None,
        latest_charge=None,
        next_action=None,
        payment_method=None,
        payment_method_configuration_details=None,
        payment_method_options={"card": {"request_three_d_secure": "automatic"}},
        processing=None,
        shipping=None,
        transfer_data=None,
        managed_payments=None,
    )
    return obj


def _card_fields(card: dict[str, Any]) -> dict[str, Any]:
    """What a PaymentMethod and a charge's payment details both say of the card."""
    fields = {key: card[key] for key in ("brand", "last4", "exp_month", "exp_year", "country", "funding")}
    return {**fields, "fingerprint": new_id("", 16)}


def payment_method(
    *, id: str, now: int, card: dict[str, Any], email: str | None, name: str | None
) -> dict[str, Any]:
    """The card the customer typed, as a PaymentMethod (what a decline's error carries)."""
    obj = fixture("payment_method")
    obj["card"].update(
        **_card_fields(card),
        display_brand=card["brand"],
        generated_from=None,
        networks={"available": [card["brand"]], "preferred": None},
        wallet=None,
    )
    obj.update(
        id=id,
        created=now,
        customer=None,
        metadata={},
        allow_redisplay="unspecified",
        billing_details={"address": _address(), "email": email, "name": name, "phone": None, "tax_id": None},
    )
    return obj


def charge(
    *,
    now: int,
    intent: dict[str, Any],
    payment_method: str,
    card: dict[str, Any],
    email: str | None,
    name: str | None,
    failure: dict[str, str] | None,
) -> dict[str, Any]:
    """A charge for the PaymentIntent: succeeded, or failed with Stripe's failure fields."""
    obj = fixture("charge")
    charge_id = new_id("ch_")
    succeeded = failure is None
    details = obj["payment_method_details"]["card"]
    details.update(
        **_card_fields(card),
        network=card["brand"],
        amount_authorized=intent["amount"] if succeeded else None,
        installments=None,
        mandate=None,
        overcapture={"maximum_amount_capturable": intent["amount"], "status": "unavailable"},
        three_d_secure=None,
        wallet=None,
    )
    details["checks"]["cvc_check"] = "pass"
    obj.update(
        id=charge_id,
        created=now,
        amount=intent["amount"],
        amount_captured=intent["amount"] if succeeded else 0,
        currency=intent["currency"],
        customer=intent["customer"],
        description=intent["description"],
        metadata=intent["metadata"],
        payment_intent=intent["id"],
        payment_method=payment_method,
        balance_transaction=new_id("txn_") if succeeded else None,
        billing_details={
            "address": _address(),
            "email": email,
            "name": name,
            "phone": None,
            "tax_id": None,
        },
        captured=succeeded,
        paid=succeeded,
        status="succeeded" if succeeded else "failed",
        failure_code=failure["code"] if failure else None,
        failure_message=failure["message"] if failure else None,
        outcome={
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network" if succeeded else "declined_by_network",
            "reason": failure["decline_code"] if failure else None,
            "risk_level": "normal",
            "risk_score": 20,
            "seller_message": "Payment complete."
            if succeeded
            else "The bank did not return any further details with this decline.",
            "type": "authorized" if succeeded else "issuer_declined",
        },
        receipt_email=None,
        receipt_url=None,
        refunds={"object": "list", "data": [], "has_more": False, "url": f"/v1/charges/{charge_id}/refunds"},
        shipping=None,
        transfer_data=None,
        source=None,
    )
    return obj


def event(
    *,
    now: int,
    type: str,
    obj: dict[str, Any],
    request_id: str | None,
    idempotency_key: str | None,
    pending_webhooks: int,
) -> dict[str, Any]:
    evt = fixture("event")
    evt.update(
        id=new_id("evt_"),
        created=now,
        type=type,
        api_version=API_VERSION,
        data={"object": public(obj)},
        pending_webhooks=pending_webhooks,
        request={"id": request_id, "idempotency_key": idempotency_key},
    )
    return evt
