"""Stripe's minimum charge amounts and special currencies: refused before Stripe is asked, as Stripe would.

The rules are Stripe's published ones (https://docs.stripe.com/currencies): a
minimum per currency, three-decimal currencies charged in whole tens, ISK and
UGX two-decimal in the API with the decimals always 00, HUF and TWD ordinary
two-decimal for charges. The app refuses below them with one sentence wherever a
payment would be asked for; the sandbox refuses exactly as Stripe does.
"""

from __future__ import annotations

from typing import Any

import pytest
import stripe
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import AuditEvent, Organization, RecoveryAttempt, Role, Transaction, TransactionStatus
from recovery.money import card_charge_problem, exponent, minimum_charge
from recovery.payments import links
from recovery.payments.gateway import StripeFailure, StripeGateway, StripeSettings
from recovery.payments.rules import PaymentRefused
from recovery.recoveries import bulk, lifecycle, refusals
from recovery.tokens.services import create_token
from tests.fixtures import stripe_events as se

# (currency, largest refused amount, smallest accepted amount), in minor units.
LIMITS = [
    ("usd", 49, 50),
    ("eur", 49, 50),
    ("gbp", 29, 30),
    ("jpy", 49, 50),  # zero-decimal: ¥50
    ("krw", 49, 50),
    ("huf", 17499, 17500),  # 175.00 HUF; HUF is two-decimal for charges
    ("mxn", 999, 1000),
    ("twd", 0, 1),  # two-decimal for charges; no row in Stripe's table
    ("isk", 99, 100),  # ISK 1.00: whole krónur only
    ("ugx", 99, 100),  # UGX 1.00: whole shillings only
    ("bhd", 9, 10),  # three-decimal, charged in whole tens
]


@pytest.fixture
def app_config(stripe_sandbox: Any) -> dict[str, Any]:
    stripe_sandbox.reset()
    return {
        "STRIPE_SECRET_KEY": stripe_sandbox.api_key,
        "STRIPE_API_BASE": stripe_sandbox.base_url,
        "BASE_URL": "http://localhost",
        "STRIPE_WEBHOOK_SECRET": se.SECRET,
        "STRIPE_WEBHOOK_RETRY_SECONDS": "0,0",
    }


def bearer(db: Any, org: Organization) -> dict[str, str]:
    _token, raw = create_token(
        db.session, org.id, "t", Role.OPERATOR, created_by=None, actor=Actor.system(org.id)
    )
    db.session.commit()
    return {"Authorization": f"Bearer {raw}"}


def gateway(stripe_sandbox: Any) -> StripeGateway:
    return StripeGateway(StripeSettings(stripe_sandbox.api_key, api_base=stripe_sandbox.base_url))


def stripe_posts(stripe_sandbox: Any) -> list[str]:
    return [r["path"] for r in stripe_sandbox.requests() if r["method"] == "POST"]


def inline_session(client: Any, amount: int, currency: str) -> Any:
    return client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": currency,
                        "unit_amount": amount,
                        "product_data": {"name": "x"},
                    },
                }
            ],
            "success_url": "http://localhost/pay/success",
        }
    )


# --- the rules ------------------------------------------------------------------------


@pytest.mark.parametrize(("currency", "refused", "accepted"), LIMITS)
def test_the_minimum_follows_stripes_table_and_special_cases(
    currency: str, refused: int, accepted: int
) -> None:
    assert minimum_charge(currency) == accepted
    assert card_charge_problem(accepted, currency) is None
    if refused:
        assert card_charge_problem(refused, currency) is not None


@pytest.mark.parametrize(
    ("amount", "currency", "problem"),
    [
        (10, "usd", "Stripe can't charge less than $0.50; this transaction is $0.10."),
        (10, "jpy", "Stripe can't charge less than ¥50; this transaction is ¥10."),
        (29, "GBP", "Stripe can't charge less than £0.30; this transaction is £0.29."),
        (17499, "huf", "Stripe can't charge less than HUF175.00; this transaction is HUF174.99."),
        (550, "isk", "Stripe charges ISK only in whole units, so ISK5.50 cannot be collected as it is."),
        (50, "ugx", "Stripe charges UGX only in whole units, so UGX0.50 cannot be collected as it is."),
        (5, "bhd", "Stripe charges BHD only in steps of 0.010, so BHD0.005 cannot be collected as it is."),
        (1050, "huf", "Stripe can't charge less than HUF175.00; this transaction is HUF10.50."),
        (123456, "huf", None),  # fractions of a forint are fine for charges (payouts only are whole)
        (80045, "twd", None),
        (500, "isk", None),
    ],
)
def test_the_refusal_is_one_sentence_in_the_merchants_format(
    amount: int, currency: str, problem: str | None
) -> None:
    assert card_charge_problem(amount, currency) == problem


@pytest.mark.parametrize(("currency", "places"), [("isk", 2), ("ugx", 2), ("huf", 2), ("twd", 2), ("jpy", 0)])
def test_isk_and_ugx_are_counted_in_hundredths_as_stripe_counts_them(currency: str, places: int) -> None:
    # "to charge 5 UGX, provide an amount value of 500" (Stripe's special cases)
    assert exponent(currency) == places


# --- the sandbox refuses as Stripe does --------------------------------------------------


@pytest.mark.parametrize(("currency", "refused", "accepted"), LIMITS)
def test_the_sandbox_refuses_a_checkout_below_the_minimum(
    stripe_client: Any, currency: str, refused: int, accepted: int
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        inline_session(stripe_client, refused, currency)
    error = raised.value
    assert error.http_status == 400
    assert error.param == "line_items[0][price_data][unit_amount]"
    body = error.json_body["error"]
    assert body["type"] == "invalid_request_error"
    if refused and currency in ("isk", "ugx", "bhd"):
        assert body["code"] == "invalid_charge_amount"
    else:
        assert body["code"] == "amount_too_small"
        assert body["doc_url"] == "https://stripe.com/docs/error-codes/amount-too-small"
        assert "total amount due must add up to at least" in body["message"]

    assert inline_session(stripe_client, accepted, currency).amount_total == accepted


def test_the_sandbox_refuses_a_payment_link_below_the_minimum_naming_the_price(stripe_client: Any) -> None:
    product = stripe_client.v1.products.create(params={"name": "x"})
    # Stripe lets a Price be small (it could be one of several items); the link is what is refused.
    price = stripe_client.v1.prices.create(
        params={"product": product.id, "unit_amount": 10, "currency": "usd"}
    )
    with pytest.raises(stripe.InvalidRequestError) as raised:
        stripe_client.v1.payment_links.create(params={"line_items": [{"price": price.id, "quantity": 1}]})
    assert (raised.value.code, raised.value.param) == ("amount_too_small", "line_items[0][price]")
    assert "The Payment Link's total amount due must add up to at least $0.50 usd" in str(
        raised.value.user_message
    )


def test_the_gateway_surfaces_stripes_code_and_param_with_its_sentence(stripe_sandbox: Any) -> None:
    stripe_sandbox.reset()
    with pytest.raises(StripeFailure) as raised:
        gateway(stripe_sandbox).create_price(product_id="prod_missing", amount=10, currency="usd", key="k1")
    assert (raised.value.code, raised.value.param) == ("resource_missing", "product")
    product_id = gateway(stripe_sandbox).create_product(name="x", metadata={}, key="k2")
    price_id = gateway(stripe_sandbox).create_price(
        product_id=product_id, amount=10, currency="usd", key="k3"
    )
    with pytest.raises(StripeFailure) as raised:
        gateway(stripe_sandbox).create_payment_link(
            price_id=price_id, metadata={}, success_url="http://localhost/pay/success", key="k4"
        )
    failure = raised.value
    assert (failure.code, failure.param, failure.http_status) == (
        "amount_too_small",
        "line_items[0][price]",
        422,
    )
    assert failure.message.startswith("The Payment Link's total amount due must add up to at least $0.50")
    assert "amount_too_small" not in failure.message


# --- the app refuses before asking Stripe ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "amount", "currency", "message"),
    [
        (
            "/v1/payments/stripe/checkout-sessions",
            10,
            "usd",
            "Stripe can't charge less than $0.50; this transaction is $0.10.",
        ),
        (
            "/v1/payments/stripe/payment-links",
            10,
            "jpy",
            "Stripe can't charge less than ¥50; this transaction is ¥10.",
        ),
        ("/v1/recoveries", 29, "gbp", "Stripe can't charge less than £0.30; this transaction is £0.29."),
    ],
)
def test_the_api_refuses_a_payment_below_the_minimum(
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Any,
    stripe_sandbox: Any,
    path: str,
    amount: int,
    currency: str,
    message: str,
) -> None:
    transaction = make_transaction(org, transaction_ref="TXN-SMALL", amount=amount, currency=currency)

    response = client.post(path, json={"transaction_ref": "TXN-SMALL"}, headers=bearer(db, org))

    assert response.status_code == 422, response.json
    assert response.json["error"]["message"] == message
    assert stripe_posts(stripe_sandbox) == []  # Stripe was never asked
    db.session.expire_all()
    assert db.session.get(Transaction, transaction.id).status == TransactionStatus.FAILED

    # At the minimum, the same request goes through.
    db.session.get(Transaction, transaction.id).amount = minimum_charge(currency)
    db.session.commit()
    again = client.post(path, json={"transaction_ref": "TXN-SMALL"}, headers=bearer(db, org))
    assert again.status_code == 201, again.json


def test_the_transaction_page_says_why_and_offers_no_button_that_would_fail(
    client: FlaskClient,
    db: Any,
    signed_in: Any,
    org: Organization,
    make_transaction: Any,
    stripe_sandbox: Any,
) -> None:
    signed_in(Role.OPERATOR, org=org)
    # Recording a small failure is allowed: it happened.
    created = client.post(
        "/transactions/new",
        data={
            "transaction_ref": "TXN-DIME",
            "amount": "0.10",
            "currency": "usd",
            "customer_email": "a@example.com",
        },
    )
    assert created.status_code == 302, created.data
    transaction = db.session.scalar(select(Transaction).where(Transaction.transaction_ref == "TXN-DIME"))
    assert transaction.amount == 10

    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)

    assert "Stripe can&#39;t charge less than $0.50; this transaction is $0.10." in page
    assert 'id="charge-problem"' in page
    for button in ("Create checkout session", "Create payment link", "Start recovery"):
        assert button not in page
    ok = make_transaction(org, amount=50, customer_email="b@example.com")
    page = client.get(f"/transactions/{ok.id}").get_data(as_text=True)
    assert "charge-problem" not in page and "Create checkout session" in page and "Start recovery" in page


@pytest.mark.parametrize("path", ["checkout-session", "payment-link"])
def test_the_dashboard_flashes_the_refusal_if_the_button_is_pressed_anyway(
    client: FlaskClient,
    db: Any,
    signed_in: Any,
    org: Organization,
    make_transaction: Any,
    stripe_sandbox: Any,
    path: str,
) -> None:
    signed_in(Role.OPERATOR, org=org)
    transaction = make_transaction(org, amount=10, currency="eur")

    response = client.post(f"/transactions/{transaction.id}/{path}", follow_redirects=True)

    assert "Stripe can&#39;t charge less than €0.50; this transaction is €0.10." in response.get_data(
        as_text=True
    )
    assert stripe_posts(stripe_sandbox) == []


def test_a_dashboard_start_is_refused_with_the_sentence(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any
) -> None:
    signed_in(Role.OPERATOR, org=org)
    transaction = make_transaction(org, amount=49, currency="usd")

    response = client.post(
        f"/transactions/{transaction.id}/recoveries", data={"channels": ["email"]}, follow_redirects=True
    )

    assert "Stripe can&#39;t charge less than $0.50; this transaction is $0.49." in response.get_data(
        as_text=True
    )
    assert db.session.scalars(select(RecoveryAttempt)).all() == []


def test_a_bulk_start_lists_the_small_ones_as_refused(
    app: Any, db: Any, org: Organization, make_transaction: Any
) -> None:
    small = make_transaction(org, transaction_ref="SMALL-1", amount=10, currency="usd")
    fine = make_transaction(org, transaction_ref="FINE-1", amount=5000, currency="usd")
    row = bulk.create(db.session, Actor.system(org.id), [small.id, fine.id], "any")
    db.session.commit()

    bulk.run(db.session, row.id)

    db.session.expire_all()
    started = db.session.scalars(select(RecoveryAttempt.transaction_id)).all()
    assert started == [fine.id]
    refused = db.session.scalar(select(type(row)).where(type(row).id == row.id))
    assert "Stripe can't charge less than $0.50; this transaction is $0.10." in str(refused.refusals)


def test_an_auto_start_of_a_small_failure_is_refused_and_noted(
    client: FlaskClient, db: Any, make_org: Any, rq_worker: Any
) -> None:
    org = make_org(import_stripe_failures=True, auto_start_recoveries=True, quiet_hours="")
    intent = se.payment_intent(
        None,
        status="requires_payment_method",
        amount=25,
        currency="usd",
        meta={"organization_id": str(org.id)},
        failure=("card_declined", "insufficient_funds", "Your card has insufficient funds."),
        receipt_email="buyer@example.com",
    )
    response = se.post(client, se.event("payment_intent.payment_failed", intent))
    assert response.status_code == 200, response.data
    rq_worker()

    db.session.expire_all()
    transaction = db.session.scalars(select(Transaction).where(Transaction.organization_id == org.id)).one()
    assert (transaction.amount, transaction.status) == (25, TransactionStatus.FAILED)  # recorded, not started
    refusal = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "recovery.auto_start_refused"))
    assert refusal.details["reason"] == "Stripe can't charge less than $0.50; this transaction is $0.25."


def test_services_refuse_with_their_own_refusal_types(
    db: Any, org: Organization, make_transaction: Any
) -> None:
    transaction = make_transaction(org, amount=10, currency="usd")
    with pytest.raises(refusals.RecoveryRefused) as started:
        lifecycle.start_recovery(db.session, transaction, Actor.system(org.id), now=transaction.created_at)
    with pytest.raises(PaymentRefused) as linked:
        links.create_payment_link(
            db.session,
            None,
            transaction,
            Actor.system(org.id),
        )
    for refused in (started.value, linked.value):
        assert (refused.status, refused.field) == (422, "amount")
