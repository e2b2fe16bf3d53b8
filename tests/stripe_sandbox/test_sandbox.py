"""The Stripe sandbox, driven through stripe-python's StripeClient over HTTP (never patching the SDK)."""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from stripe_sandbox.app import mask
from stripe_sandbox.forms import FormError, decode_form
from stripe_sandbox.harness import SandboxProcess
from stripe_sandbox.webhooks import sign

FIXTURES = json.loads((Path(__file__).parents[2] / "stripe_sandbox/fixtures.json").read_text())["resources"]
SUCCESS_URL = "https://merchant.example/paid?session={CHECKOUT_SESSION_ID}"


def session_params(**overrides: Any) -> dict[str, Any]:
    return {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 5000,
                    "product_data": {"name": "Invoice TXN-1"},
                },
                "quantity": 1,
            }
        ],
        "customer_email": "customer@example.com",
        "client_reference_id": "TXN-1",
        "metadata": {"transaction_ref": "TXN-1"},
        "payment_intent_data": {"metadata": {"transaction_ref": "TXN-1"}},
        "success_url": SUCCESS_URL,
        "cancel_url": "https://merchant.example/cancel",
        **overrides,
    }


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


# --- the form decoder ---


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("mode", "payment")], {"mode": "payment"}),
        ([("metadata[order_id]", "ORD-1")], {"metadata": {"order_id": "ORD-1"}}),
        (
            [
                ("line_items[0][price_data][unit_amount]", "5000"),
                ("line_items[0][price_data][product_data][name]", "Shirt"),
                ("line_items[0][quantity]", "1"),
                ("line_items[1][price]", "price_1"),
            ],
            {
                "line_items": [
                    {
                        "price_data": {"unit_amount": "5000", "product_data": {"name": "Shirt"}},
                        "quantity": "1",
                    },
                    {"price": "price_1"},
                ]
            },
        ),
        ([("payment_intent_data[metadata][k]", "v")], {"payment_intent_data": {"metadata": {"k": "v"}}}),
        (
            [("restrictions[completed_sessions][limit]", "1")],
            {"restrictions": {"completed_sessions": {"limit": "1"}}},
        ),
        (
            [("after_completion[type]", "redirect"), ("after_completion[redirect][url]", "https://x/y")],
            {"after_completion": {"type": "redirect", "redirect": {"url": "https://x/y"}}},
        ),
        (
            [("expand[0]", "payment_intent"), ("expand[1]", "customer")],
            {"expand": ["payment_intent", "customer"]},
        ),
        ([("expand[]", "a"), ("expand[]", "b")], {"expand": ["a", "b"]}),
        ([("expand[10]", "b"), ("expand[2]", "a")], {"expand": ["a", "b"]}),
        ([("metadata[note]", "a=b&c[0]")], {"metadata": {"note": "a=b&c[0]"}}),
    ],
)
def test_decode_form(pairs: list[tuple[str, str]], expected: dict[str, Any]) -> None:
    assert decode_form(pairs) == expected


@pytest.mark.parametrize(
    "pairs",
    [
        [("a", "1"), ("a[b]", "2")],
        [("a[b]", "2"), ("a", "1")],
        [("a]b", "1")],
        [("[a]", "1")],
    ],
)
def test_decode_form_refuses_contradictions(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(FormError):
        decode_form(pairs)


def test_mask_hides_all_but_the_prefix_and_last_four() -> None:
    assert mask("sk_test_wrongkeyabcd") == "sk_test_********abcd"


def test_signature_is_what_stripe_python_verifies() -> None:
    payload = json.dumps({"id": "evt_1", "type": "checkout.session.completed"})
    header = sign(payload, "whsec_abc", int(time.time()))
    assert stripe.WebhookSignature.verify_header(payload, header, "whsec_abc", tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload, header, "whsec_other", tolerance=300)


# --- object shapes ---


def test_every_object_has_every_key_of_its_stripe_fixture(stripe_client: Any, stripe_sandbox: Any) -> None:
    v1 = stripe_client.v1
    customer = v1.customers.create(params={"email": "c@example.com", "name": "Ada"})
    product = v1.products.create(params={"name": "Invoice"})
    price = v1.prices.create(params={"product": product.id, "unit_amount": 5000, "currency": "usd"})
    link = v1.payment_links.create(params={"line_items": [{"price": price.id, "quantity": 1}]})
    session = v1.checkout.sessions.create(params=session_params(customer_email=None, customer=customer.id))
    stripe_sandbox.pay(session.id, "4242 4242 4242 4242")
    session = v1.checkout.sessions.retrieve(session.id)
    intent = v1.payment_intents.retrieve(session.payment_intent)
    charge = v1.charges.retrieve(intent.latest_charge)
    event = v1.events.list().data[0]
    line_item = v1.checkout.sessions.line_items.list(session.id).data[0]

    created = {
        "customer": [customer, v1.customers.retrieve(customer.id)],
        "product": [product, v1.products.retrieve(product.id)],
        "price": [price, v1.prices.retrieve(price.id)],
        "payment_link": [link, v1.payment_links.retrieve(link.id)],
        "checkout.session": [session],
        "payment_intent": [intent],
        "charge": [charge],
        "event": [event, v1.events.retrieve(event.id)],
        "item": [line_item],
    }
    for kind, found in created.items():
        for obj in found:
            keys = set(obj.to_dict())
            missing_keys = set(FIXTURES[kind]) - keys
            assert not missing_keys, f"{kind} lacks {sorted(missing_keys)}"
            assert obj.object == FIXTURES[kind]["object"]
            assert not any(key.startswith("_") for key in keys)


def test_ids_and_session_fields_look_like_stripes(stripe_client: Any, stripe_sandbox: Any) -> None:
    session = stripe_client.v1.checkout.sessions.create(params=session_params())
    assert session.id.startswith("cs_test_") and len(session.id) == 66
    assert session.url == f"{stripe_sandbox.base_url}/c/pay/{session.id}"
    assert (session.status, session.payment_status) == ("open", "unpaid")
    assert session.payment_intent is None
    assert session.customer_details is None
    assert (session.amount_total, session.amount_subtotal, session.currency) == (5000, 5000, "usd")
    assert session.metadata.to_dict() == {"transaction_ref": "TXN-1"}
    assert session.client_reference_id == "TXN-1"
    assert session.livemode is False
    assert session.expires_at - session.created == 24 * 3600
    assert session.last_response.headers["Request-Id"].startswith("req_")


# --- authentication, idempotency, errors ---


def test_missing_api_key_is_an_authentication_error(stripe_sandbox: Any) -> None:
    client = stripe.StripeClient("", base_addresses={"api": stripe_sandbox.base_url})
    with pytest.raises(stripe.AuthenticationError, match="You did not provide an API key"):
        client.v1.customers.list()
    response = requests.get(f"{stripe_sandbox.base_url}/v1/customers", timeout=5)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_wrong_api_key_is_an_authentication_error_with_the_key_masked(stripe_sandbox: Any) -> None:
    client = stripe.StripeClient("sk_test_wrongkeyabcd", base_addresses={"api": stripe_sandbox.base_url})
    with pytest.raises(stripe.AuthenticationError) as raised:
        client.v1.customers.create(params={"email": "a@example.com"})
    assert raised.value.http_status == 401
    assert raised.value.user_message == "Invalid API Key provided: sk_test_********abcd"


def test_idempotency_key_replays_the_first_result(stripe_client: Any, stripe_sandbox: Any) -> None:
    options = {"idempotency_key": "recovery-TXN-1-checkout"}
    first = stripe_client.v1.checkout.sessions.create(params=session_params(), options=options)
    again = stripe_client.v1.checkout.sessions.create(params=session_params(), options=options)
    assert again.id == first.id
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(stripe_client.v1.checkout.sessions.list().data) == 1
    log = [r for r in stripe_sandbox.requests() if r["idempotency_key"] == options["idempotency_key"]]
    assert [r["replayed"] for r in log] == [False, True]

    with pytest.raises(stripe.IdempotencyError, match="same parameters"):
        stripe_client.v1.checkout.sessions.create(
            params=session_params(client_reference_id="TXN-2"), options=options
        )


def test_keys_belong_to_one_endpoint(stripe_client: Any) -> None:
    options = {"idempotency_key": "k-1"}
    stripe_client.v1.customers.create(params={"email": "a@example.com"}, options=options)
    with pytest.raises(stripe.IdempotencyError, match="same endpoint"):
        stripe_client.v1.products.create(params={"name": "x"}, options=options)


def test_a_refused_request_is_not_saved_under_its_key(stripe_client: Any) -> None:
    options = {"idempotency_key": "k-2"}
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.products.create(params={}, options=options)
    assert stripe_client.v1.products.create(params={"name": "x"}, options=options).name == "x"


@pytest.mark.parametrize(
    ("call", "kind"),
    [
        (lambda v1: v1.checkout.sessions.retrieve("cs_test_missing"), "checkout.session"),
        (lambda v1: v1.customers.retrieve("cus_missing"), "customer"),
        (lambda v1: v1.payment_links.retrieve("plink_missing"), "payment_link"),
        (lambda v1: v1.payment_intents.retrieve("pi_missing"), "payment_intent"),
        (lambda v1: v1.charges.retrieve("ch_missing"), "charge"),
        (lambda v1: v1.events.retrieve("evt_missing"), "event"),
    ],
)
def test_unknown_id_is_resource_missing(stripe_client: Any, call: Callable[[Any], Any], kind: str) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        call(stripe_client.v1)
    assert raised.value.http_status == 404
    assert raised.value.code == "resource_missing"
    assert raised.value.param == "id"
    assert raised.value.user_message.startswith(f"No such {kind}: '")


def _line(**price_data: Any) -> list[dict[str, Any]]:
    data = {"currency": "usd", "unit_amount": 5000, "product_data": {"name": "x"}, **price_data}
    return [{"price_data": {k: v for k, v in data.items() if v is not None}, "quantity": 1}]


@pytest.mark.parametrize(
    ("overrides", "param", "code"),
    [
        ({"mode": None}, "mode", "parameter_missing"),
        ({"line_items": None}, "line_items", "parameter_missing"),
        ({"line_items": _line(currency=None)}, "line_items[0][price_data][currency]", "parameter_missing"),
        ({"line_items": _line(currency="xyz")}, "line_items[0][price_data][currency]", "parameter_invalid"),
        (
            {"line_items": _line(unit_amount="ten")},
            "line_items[0][price_data][unit_amount]",
            "parameter_invalid_integer",
        ),
        (
            {"line_items": _line(unit_amount=-1)},
            "line_items[0][price_data][unit_amount]",
            "parameter_invalid_integer",
        ),
        (
            {"line_items": _line(product_data={"description": "x"})},
            "line_items[0][price_data][product_data][name]",
            "parameter_missing",
        ),
        ({"line_items": _line(product_data=None)}, "line_items[0][price_data][product]", "parameter_missing"),
        (
            {"line_items": [{"price": "price_missing", "quantity": 1}]},
            "line_items[0][price]",
            "resource_missing",
        ),
        (
            {"line_items": [{"price_data": _line()[0]["price_data"]}]},
            "line_items[0][quantity]",
            "parameter_missing",
        ),
        ({"customer": "cus_missing", "customer_email": None}, "customer", "resource_missing"),
        # Stripe charges three-decimal currencies only in whole tens of their minor unit.
        (
            {"line_items": _line(currency="kwd", unit_amount=5124)},
            "line_items[0][price_data][unit_amount]",
            "invalid_charge_amount",
        ),
        # ISK and UGX: two-decimal in the API, the decimals always 00 (Stripe's "special cases").
        (
            {"line_items": _line(currency="isk", unit_amount=550)},
            "line_items[0][price_data][unit_amount]",
            "invalid_charge_amount",
        ),
        (
            {"line_items": _line(unit_amount=49)},
            "line_items[0][price_data][unit_amount]",
            "amount_too_small",
        ),
        ({"expires_at": "soon"}, "expires_at", "parameter_invalid_integer"),
        ({"success_url": "not a url"}, "success_url", "url_invalid"),
        ({"cancel_url": "javascript:alert(1)"}, "cancel_url", "url_invalid"),
        ({"colour": "blue"}, "colour", "parameter_unknown"),
    ],
)
def test_invalid_session_params_name_the_param(
    stripe_client: Any, overrides: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        stripe_client.v1.checkout.sessions.create(params=session_params(**overrides))
    assert raised.value.http_status == 400
    assert raised.value.param == param
    assert raised.value.code == code
    # As Stripe's: every refused parameter links the code's documentation.
    error = raised.value.json_body["error"]
    assert error["doc_url"] == f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    assert error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize("offset", [30 * 60 - 1, 29 * 60, 24 * 3600 + 60, -60])
def test_expires_at_must_be_30_minutes_to_24_hours_away(stripe_client: Any, offset: int) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        stripe_client.v1.checkout.sessions.create(params=session_params(expires_at=int(time.time()) + offset))
    assert raised.value.param == "expires_at"


def test_a_three_decimal_amount_ending_in_0_is_charged(stripe_client: Any) -> None:
    session = stripe_client.v1.checkout.sessions.create(
        params=session_params(line_items=_line(currency="bhd", unit_amount=5120))
    )
    assert (session.amount_total, session.currency) == (5120, "bhd")


def test_expires_at_within_the_window_is_kept(stripe_client: Any) -> None:
    expires_at = int(time.time()) + 3600
    session = stripe_client.v1.checkout.sessions.create(params=session_params(expires_at=expires_at))
    assert session.expires_at == expires_at


# --- paying ---


def _pay_page(base_url: str, session_id: str, card: str, **fields: str) -> requests.Response:
    form = {"email": "customer@example.com", "card_expiry": "12 / 34", "card_cvc": "123", "card_number": card}
    return requests.post(
        f"{base_url}/c/pay/{session_id}", data={**form, **fields}, allow_redirects=False, timeout=10
    )


def test_paying_4242_on_the_hosted_page_completes_the_session(
    stripe_client: Any, stripe_sandbox: Any
) -> None:
    v1 = stripe_client.v1
    session = v1.checkout.sessions.create(params=session_params())
    page = requests.get(session.url, timeout=5)
    assert page.status_code == 200
    assert "Invoice TXN-1" in page.text and "$50.00" in page.text
    assert 'value="customer@example.com"' in page.text
    assert 'href="https://merchant.example/cancel"' in page.text

    response = _pay_page(stripe_sandbox.base_url, session.id, "4242 4242 4242 4242")

    assert response.status_code == 302
    assert response.headers["Location"] == SUCCESS_URL.replace("{CHECKOUT_SESSION_ID}", session.id)
    session = v1.checkout.sessions.retrieve(session.id)
    assert (session.status, session.payment_status) == ("complete", "paid")
    assert session.customer_details.email == "customer@example.com"
    intent = v1.payment_intents.retrieve(session.payment_intent)
    assert (intent.status, intent.amount, intent.amount_received) == ("succeeded", 5000, 5000)
    assert intent.metadata.to_dict() == {"transaction_ref": "TXN-1"}
    charge = v1.charges.retrieve(intent.latest_charge)
    assert (charge.status, charge.paid, charge.payment_intent) == ("succeeded", True, intent.id)
    assert charge.payment_method_details.card.last4 == "4242"
    types = [event.type for event in v1.events.list().data]
    assert types == ["checkout.session.completed", "payment_intent.succeeded"]  # newest first
    completed = v1.events.list(params={"type": "checkout.session.completed"}).data[0]
    assert completed.data.object.id == session.id
    assert completed.data.object.payment_status == "paid"

    again = requests.get(f"{stripe_sandbox.base_url}/c/pay/{session.id}", timeout=5)
    assert "You've already paid" in html.unescape(again.text)


def test_test_helper_pays_like_the_page(stripe_client: Any, stripe_sandbox: Any) -> None:
    session = stripe_client.v1.checkout.sessions.create(params=session_params())
    paid = stripe_sandbox.pay(session.id, "4242424242424242")
    assert paid["status"] == "complete" and paid["payment_intent"].startswith("pi_")
    assert stripe_sandbox.pay(session.id, "4242424242424242")["error"]["code"] == "checkout_session_not_open"


@pytest.mark.parametrize(
    ("card", "code", "decline_code", "message"),
    [
        ("4000 0000 0000 0002", "card_declined", "generic_decline", "Your card was declined."),
        ("4000 0000 0000 9995", "card_declined", "insufficient_funds", "Your card has insufficient funds."),
        (
            "4000 0027 6000 3184",
            "authentication_required",
            "authentication_required",
            "requires authentication",
        ),
    ],
)
def test_declined_cards_leave_the_session_open(
    stripe_client: Any, stripe_sandbox: Any, card: str, code: str, decline_code: str, message: str
) -> None:
    v1 = stripe_client.v1
    session = v1.checkout.sessions.create(params=session_params())

    page = _pay_page(stripe_sandbox.base_url, session.id, card)
    assert page.status_code == 402
    assert message in html.unescape(page.text)
    declined = stripe_sandbox.pay(session.id, card)["error"]
    assert (declined["type"], declined["code"], declined["decline_code"]) == (
        "card_error",
        code,
        decline_code,
    )

    session = v1.checkout.sessions.retrieve(session.id)
    assert (session.status, session.payment_status) == ("open", "unpaid")
    intent = v1.payment_intents.retrieve(session.payment_intent)  # one PaymentIntent for both attempts
    assert intent.status == "requires_payment_method"
    assert intent.last_payment_error.decline_code == decline_code
    assert intent.last_payment_error.code == code
    assert message in intent.last_payment_error.message
    assert v1.charges.retrieve(intent.latest_charge).status == "failed"
    failed = v1.events.list(params={"type": "payment_intent.payment_failed"}).data
    assert len(failed) == 2 and failed[0].data.object.id == intent.id

    assert _pay_page(stripe_sandbox.base_url, session.id, "4242424242424242").status_code == 302
    assert v1.payment_intents.retrieve(session.payment_intent).status == "succeeded"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"card_number": "4111 1111 1111 1112"}, "Your card number is incorrect."),
        ({"card_number": ""}, "Your card number is incomplete."),
        ({"card_expiry": "13/30"}, "Your card's expiration date is incomplete."),
        ({"card_expiry": "01/20"}, "Your card's expiration year is in the past."),
        ({"card_cvc": ""}, "Your card's security code is incomplete."),
        ({"email": "not-an-email"}, "Your email address is invalid."),
    ],
)
def test_page_refuses_bad_card_fields(
    stripe_client: Any, stripe_sandbox: Any, fields: dict[str, str], message: str
) -> None:
    session = stripe_client.v1.checkout.sessions.create(params=session_params(customer_email=None))
    response = _pay_page(
        stripe_sandbox.base_url, session.id, fields.pop("card_number", "4242424242424242"), **fields
    )
    assert response.status_code == 400
    assert message in html.unescape(response.text)
    assert stripe_client.v1.checkout.sessions.retrieve(session.id).payment_intent is None


# --- expiry ---


def test_expire_endpoint(stripe_client: Any, stripe_sandbox: Any) -> None:
    v1 = stripe_client.v1
    session = v1.checkout.sessions.create(params=session_params())
    expired = v1.checkout.sessions.expire(session.id)
    assert expired.status == "expired" and expired.url is None
    with pytest.raises(stripe.InvalidRequestError, match=r'status in \["open"\] can be expired'):
        v1.checkout.sessions.expire(session.id)
    page = requests.get(f"{stripe_sandbox.base_url}/c/pay/{session.id}", timeout=5)
    assert "no longer available" in page.text
    events = v1.events.list(params={"type": "checkout.session.expired"}).data
    assert [event.data.object.id for event in events] == [session.id]


def test_session_expires_when_the_clock_passes_expires_at(stripe_client: Any, stripe_sandbox: Any) -> None:
    v1 = stripe_client.v1
    session = v1.checkout.sessions.create(params=session_params(expires_at=int(time.time()) + 1800))
    stripe_sandbox.advance_clock(1700)
    assert v1.checkout.sessions.retrieve(session.id).status == "open"
    stripe_sandbox.advance_clock(200)
    assert v1.checkout.sessions.retrieve(session.id).status == "expired"
    assert v1.checkout.sessions.retrieve(session.id).status == "expired"
    assert len(v1.events.list(params={"type": "checkout.session.expired"}).data) == 1
    assert stripe_sandbox.pay(session.id)["error"]["code"] == "checkout_session_not_open"


# --- payment links ---


def test_payment_link_with_limit_one_deactivates_after_one_payment(
    stripe_client: Any, stripe_sandbox: Any
) -> None:
    v1 = stripe_client.v1
    product = v1.products.create(params={"name": "Invoice TXN-9"})
    price = v1.prices.create(params={"product": product.id, "unit_amount": 1250, "currency": "eur"})
    link = v1.payment_links.create(
        params={
            "line_items": [{"price": price.id, "quantity": 1}],
            "metadata": {"transaction_ref": "TXN-9"},
            "payment_intent_data": {"metadata": {"transaction_ref": "TXN-9"}},
            "restrictions": {"completed_sessions": {"limit": 1}},
            "after_completion": {"type": "redirect", "redirect": {"url": SUCCESS_URL}},
        }
    )
    assert link.url == f"{stripe_sandbox.base_url}/b/{link.id}"
    assert link.active and link.restrictions.completed_sessions.limit == 1

    opened = requests.get(link.url, allow_redirects=False, timeout=5)
    assert opened.status_code == 302
    session_id = opened.headers["Location"].rsplit("/", 1)[1]
    session = v1.checkout.sessions.retrieve(session_id)
    assert (session.payment_link, session.amount_total, session.currency) == (link.id, 1250, "eur")
    assert session.metadata.to_dict() == {"transaction_ref": "TXN-9"}
    assert "€12.50" in requests.get(session.url, timeout=5).text

    paid = _pay_page(stripe_sandbox.base_url, session_id, "4242424242424242")
    assert paid.headers["Location"] == SUCCESS_URL.replace("{CHECKOUT_SESSION_ID}", session_id)
    intent = v1.payment_intents.retrieve(v1.checkout.sessions.retrieve(session_id).payment_intent)
    assert intent.metadata.to_dict() == {"transaction_ref": "TXN-9"}
    assert [s.id for s in v1.checkout.sessions.list(params={"payment_link": link.id}).data] == [session_id]

    link = v1.payment_links.retrieve(link.id)
    assert link.active is False and link.restrictions.completed_sessions.count == 1
    assert "This link has been deactivated" in requests.get(link.url, timeout=5).text


def _link(v1: Any, **params: Any) -> Any:
    product = v1.products.create(params={"name": "x"})
    price = v1.prices.create(params={"product": product.id, "unit_amount": 500, "currency": "usd"})
    return v1.payment_links.create(params={"line_items": [{"price": price.id, "quantity": 1}], **params})


def _open(link: Any) -> str:
    opened = requests.get(link.url, allow_redirects=False, timeout=5)
    assert opened.status_code == 302
    return str(opened.headers["Location"].rsplit("/", 1)[1])


def test_a_used_up_link_takes_no_second_payment_from_a_page_opened_before(
    stripe_client: Any, stripe_sandbox: Any
) -> None:
    # Two tabs on a single-use link: once one pays, the other must not charge again.
    v1 = stripe_client.v1
    link = _link(v1, restrictions={"completed_sessions": {"limit": 1}})
    first, second = _open(link), _open(link)
    assert stripe_sandbox.pay(first)["status"] == "complete"

    refused = stripe_sandbox.pay(second)["error"]
    assert (refused["code"], refused["message"]) == (
        "checkout_session_not_open",
        "This Checkout Session's Payment Link is no longer active.",
    )
    assert (
        "This link has been deactivated"
        in _pay_page(stripe_sandbox.base_url, second, "4242424242424242").text
    )
    assert (
        "This link has been deactivated"
        in requests.get(f"{stripe_sandbox.base_url}/c/pay/{second}", timeout=5).text
    )
    assert v1.checkout.sessions.retrieve(second).payment_intent is None  # nothing charged
    assert v1.payment_links.retrieve(link.id).restrictions.completed_sessions.count == 1


def test_a_deactivated_link_takes_no_payment_from_a_page_opened_before(
    stripe_client: Any, stripe_sandbox: Any
) -> None:
    v1 = stripe_client.v1
    link = _link(v1)
    session_id = _open(link)
    v1.payment_links.update(link.id, params={"active": False})
    assert stripe_sandbox.pay(session_id)["error"]["code"] == "checkout_session_not_open"
    v1.payment_links.update(link.id, params={"active": True})
    assert stripe_sandbox.pay(session_id)["status"] == "complete"


def test_the_test_helper_refuses_an_expired_card_like_stripe(stripe_client: Any, stripe_sandbox: Any) -> None:
    # On the sandbox's clock, moved to 15 July next year: last year's card, then last month's.
    real = datetime.now(UTC)
    target = datetime(real.year + 1, 7, 15, tzinfo=UTC)
    stripe_sandbox.advance_clock((target - real).total_seconds())
    session = stripe_client.v1.checkout.sessions.create(params=session_params())
    for month, year, code, param in (
        ("12", str(real.year), "invalid_expiry_year", "exp_year"),
        ("6", str(target.year), "invalid_expiry_month", "exp_month"),
    ):
        error = stripe_sandbox.pay(session.id, exp_month=month, exp_year=year)["error"]
        assert (error["type"], error["code"], error["param"]) == ("card_error", code, param)
    assert stripe_client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert stripe_sandbox.pay(session.id, exp_month="7", exp_year=str(target.year))["status"] == "complete"


def test_a_declines_payment_method_carries_the_billing_details(
    stripe_client: Any, stripe_sandbox: Any
) -> None:
    # The app imports a failed payment's customer from here, as Stripe sends it.
    session = stripe_client.v1.checkout.sessions.create(params=session_params(customer_email=None))
    stripe_sandbox.pay(session.id, "4000000000000002", email="ada@example.com", name="Ada Lovelace")
    [event] = stripe_client.v1.events.list(params={"type": "payment_intent.payment_failed"}).data
    intent = event.data.object
    method = intent.last_payment_error.payment_method
    assert method.id == intent.payment_method and method.object == "payment_method"
    assert (method.billing_details.email, method.billing_details.name) == ("ada@example.com", "Ada Lovelace")
    assert (method.card.last4, method.type) == ("0002", "card")


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("/v1/customers?starting_after[x]=1", "starting_after"),
        ("/v1/events?type[0]=checkout.session.completed", "type"),
        ("/v1/checkout/sessions?customer_details[email][x]=a", "customer_details[email]"),
    ],
)
def test_a_list_filter_that_is_not_a_string_is_a_400(stripe_sandbox: Any, query: str, param: str) -> None:
    response = requests.get(
        stripe_sandbox.base_url + query,
        headers={"Authorization": f"Bearer {stripe_sandbox.api_key}"},
        timeout=5,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "parameter_invalid_string",
        param,
    )


def test_a_payment_link_redirect_must_be_a_web_address(stripe_client: Any) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        _link(stripe_client.v1, after_completion={"type": "redirect", "redirect": {"url": "nope"}})
    assert (raised.value.param, raised.value.code) == ("after_completion[redirect][url]", "url_invalid")


def test_payment_link_can_be_deactivated_and_reactivated(stripe_client: Any) -> None:
    v1 = stripe_client.v1
    product = v1.products.create(params={"name": "x"})
    price = v1.prices.create(params={"product": product.id, "unit_amount": 500, "currency": "usd"})
    link = v1.payment_links.create(params={"line_items": [{"price": price.id, "quantity": 1}]})
    assert v1.payment_links.update(link.id, params={"active": False}).active is False
    assert "deactivated" in requests.get(link.url, timeout=5).text
    assert v1.payment_links.update(link.id, params={"active": True}).active is True
    assert requests.get(link.url, allow_redirects=False, timeout=5).status_code == 302


# --- webhooks ---


class Receiver:
    """A tiny webhook endpoint on loopback that answers the statuses queued in `answers`, then 200."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.received: list[tuple[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.received.append((body, self.headers["Stripe-Signature"]))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def delivered_events(sandbox: SandboxProcess) -> set[str]:
    return {d["event_id"] for d in sandbox.deliveries() if d["state"] == "delivered"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver([500])
    yield receiver
    receiver.close()


def test_events_are_delivered_signed_and_retried(
    stripe_client: Any, stripe_sandbox: Any, receiver: Receiver
) -> None:
    stripe_sandbox.add_webhook_endpoint(receiver.url, "whsec_test_receiver")
    session = stripe_client.v1.checkout.sessions.create(params=session_params())
    stripe_sandbox.pay(session.id)

    # The first delivery gets a 500 and is retried; both events arrive, in creation order.
    wait_for(lambda: len(receiver.received) >= 3)
    events = []
    for payload, header in receiver.received:
        assert stripe.WebhookSignature.verify_header(payload, header, "whsec_test_receiver", tolerance=300)
        event = stripe.Webhook.construct_event(payload, header, "whsec_test_receiver", tolerance=300)
        events.append((event.id, event.type))
    succeeded, completed = stripe_client.v1.events.list().data[::-1]
    assert events == [
        (succeeded.id, succeeded.type),
        (completed.id, completed.type),
        (succeeded.id, succeeded.type),
    ]
    assert json.loads(receiver.received[1][0])["data"]["object"]["id"] == session.id

    wait_for(lambda: len(delivered_events(stripe_sandbox)) == 2)
    attempts = sorted(d["attempts"] for d in stripe_sandbox.deliveries() if d["state"] == "delivered")
    assert attempts == [1, 2]
    assert stripe_client.v1.events.retrieve(succeeded.id).pending_webhooks == 0


# --- fault injection ---


def test_two_500s_then_success_with_retries(stripe_client: Any, stripe_sandbox: Any) -> None:
    stripe_sandbox.fault(status=500, count=2)
    customer = stripe_client.v1.customers.create(params={"email": "retry@example.com"})
    assert customer.email == "retry@example.com"
    tries = [r for r in stripe_sandbox.requests() if r["path"] == "/v1/customers"]
    assert [r["status"] for r in tries] == [500, 500, 200]
    assert len({r["idempotency_key"] for r in tries}) == 1
    assert len(stripe_client.v1.customers.list().data) == 1


def test_500_without_retries_is_an_api_error(stripe_sandbox: Any, stripe_client: Any) -> None:
    client = stripe.StripeClient(
        stripe_sandbox.api_key, base_addresses={"api": stripe_sandbox.base_url}, max_network_retries=0
    )
    stripe_sandbox.fault(status=500)
    with pytest.raises(stripe.APIError):
        client.v1.customers.create(params={"email": "a@example.com"})
    assert client.v1.customers.list().data == []


def test_429_is_a_rate_limit_error_without_retries(stripe_sandbox: Any, stripe_client: Any) -> None:
    client = stripe.StripeClient(
        stripe_sandbox.api_key, base_addresses={"api": stripe_sandbox.base_url}, max_network_retries=0
    )
    stripe_sandbox.fault(status=429)
    with pytest.raises(stripe.RateLimitError) as raised:
        client.v1.customers.list()
    assert raised.value.http_status == 429
    assert raised.value.headers["Stripe-Should-Retry"] == "true"


def test_429_is_retried_by_stripe_python_because_it_says_should_retry(
    stripe_sandbox: Any, stripe_client: Any
) -> None:
    stripe_sandbox.fault(status=429)
    assert stripe_client.v1.customers.list().data == []
    assert [r["status"] for r in stripe_sandbox.requests()] == [429, 200]


def test_delay_fault_slows_requests_down(stripe_sandbox: Any, stripe_client: Any) -> None:
    stripe_sandbox.fault(delay_ms=300, count=1)
    started = time.monotonic()
    stripe_client.v1.customers.list()
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    stripe_client.v1.customers.list()
    assert time.monotonic() - started < 0.3


# --- persistence ---


def test_state_and_pending_deliveries_survive_a_restart(tmp_path: Path) -> None:
    database = tmp_path / "sandbox.sqlite3"
    receiver = Receiver([503] * 1000)  # down while the first process runs
    try:
        with SandboxProcess(database, webhook_retry_base_seconds=0.2) as first:
            first.add_webhook_endpoint(receiver.url)
            client = stripe.StripeClient(first.api_key, base_addresses={"api": first.base_url})
            session = client.v1.checkout.sessions.create(
                params=session_params(), options={"idempotency_key": "k"}
            )
            first.pay(session.id)
            wait_for(lambda: receiver.received)
        receiver.answers.clear()
        received_before = len(receiver.received)

        # The second process also starts with a fault from SANDBOX_FAULTS, which the client's retry absorbs.
        faults = json.dumps({"status": 500, "count": 1})
        with SandboxProcess(
            database, webhook_retry_base_seconds=0.2, env={"SANDBOX_FAULTS": faults}
        ) as second:
            client = stripe.StripeClient(
                second.api_key, base_addresses={"api": second.base_url}, max_network_retries=1
            )
            restored = client.v1.checkout.sessions.retrieve(session.id)
            assert (restored.status, restored.amount_total) == ("complete", 5000)
            assert [r["status"] for r in second.requests()][-2:] == [500, 200]
            again = client.v1.checkout.sessions.create(
                params=session_params(), options={"idempotency_key": "k"}
            )
            assert again.id == session.id
            delivered = wait_for(lambda: len(delivered_events(second)) == 2 and delivered_events(second))
            assert delivered == {e.id for e in client.v1.events.list().data}
        assert len(receiver.received) > received_before
    finally:
        receiver.close()
