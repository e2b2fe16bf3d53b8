"""A transaction's own pages: detail, create by form, edit contact details."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from recovery.models import (
    AuditEvent,
    RecoveryAttempt,
    Transaction,
    User,
)
from tests.fixtures.transactions import get, transaction_audits

# --- the detail page -----------------------------------------------------------


def test_detail_shows_every_field(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    transaction = make_transaction(
        org=user.organization,
        transaction_ref="TXN-FULL",
        amount=12345,
        currency="eur",
        status="recovering",
        failure_code="insufficient_funds",
        failure_message="Your card has insufficient funds.",
        customer_name="Zoë Lee",
        customer_email="zoe@example.com",
        customer_phone="+442079460958",
        customer_country="GB",
        customer_locale="en-GB",
        meta={"order_id": "ORD-123"},
        stripe_payment_intent_id="pi_3MtwBwLkdIwHu7ix28a3tqPa",
        stripe_checkout_session_id="cs_test_a1b2c3",
        stripe_customer_id="cus_NffrFeUfNV2Hib",
        payment_link_url="https://buy.stripe.com/test_123",
        failed_at=datetime(2025, 1, 19, 10, 30, tzinfo=UTC),
    )

    page = get(client, f"/transactions/{transaction.id}")

    for shown in (
        "TXN-FULL",
        "€123.45",
        '€123.45 <span class="sub">EUR</span>',
        "recovering",
        "insufficient_funds",
        "Your card has insufficient funds.",
        "Zoë Lee",
        "zoe@example.com",
        "+442079460958",
        "<dd>GB</dd>",
        "<dd>en-GB</dd>",
        "<dt><bdi>order_id</bdi></dt><dd><bdi>ORD-123</bdi></dd>",
        "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "cs_test_a1b2c3",
        "cus_NffrFeUfNV2Hib",
        'href="https://buy.stripe.com/test_123"',
        "19 Jan 2025, 10:30 UTC",
        "Payment failed",
    ):
        assert shown in page, shown
    assert "No recovery has been started" in page


def test_detail_of_another_organizations_transaction_is_404(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_transaction: Callable[..., Transaction],
) -> None:
    signed_in("owner")
    theirs = make_transaction(transaction_ref="THEIRS")
    for url in (
        f"/transactions/{theirs.id}",
        f"/transactions/{theirs.id}/edit",
        "/transactions/by-ref/THEIRS",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "THEIRS" not in response.get_data(as_text=True)


def test_by_ref_redirects_to_the_detail(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    transaction = make_transaction(org=user.organization, transaction_ref="REF-9")
    response = client.get("/transactions/by-ref/REF-9")
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/transactions/{transaction.id}")


def test_detail_lists_recovery_attempts(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_transaction: Callable[..., Transaction],
    db: Any,
) -> None:
    user = signed_in("viewer")
    transaction = make_transaction(org=user.organization, transaction_ref="T-ATT", status="recovering")
    db.session.add(
        RecoveryAttempt(
            organization_id=user.organization_id,
            transaction_id=transaction.id,
            channel="sms",
            token="tok_" + "a" * 40,
            status="notified",
            expires_at=datetime(2030, 1, 8, 9, 0, tzinfo=UTC),
            max_retries=3,
            messages_sent=2,
        )
    )
    db.session.commit()

    page = get(client, f"/transactions/{transaction.id}")

    assert "No recovery has been started" not in page
    assert '<td data-label="Channel">sms</td>' in page
    assert '<span class="status status-notified">notified</span>' in page
    assert "2 / 4" in page  # messages sent of the first send plus retries
    assert "8 Jan 2030, 09:00 UTC" in page
    assert "Recovery started" in page  # also on the timeline


# --- create ------------------------------------------------------------------

FORM = {
    "transaction_ref": "TXN-NEW-1",
    "amount": "50",
    "currency": "USD",
    "customer_name": "Ann Lee",
    "customer_email": "Ann@Example.com",
    "customer_phone": "+1 415 555 0123",
    "customer_country": "us",
    "customer_locale": "en-US",
    "failure_code": "card_declined",
    "failure_message": "Declined by the bank.",
    "failed_at": "2025-01-19",
    "metadata": '{"order_id": "ORD-7"}',
}


def test_create_by_form(client: FlaskClient, signed_in: Callable[..., User], db: Any) -> None:
    user = signed_in("operator")

    response = client.post("/transactions/new", data=FORM)

    assert response.status_code == 302
    transaction = db.session.scalar(select(Transaction))
    assert response.headers["Location"].endswith(f"/transactions/{transaction.id}")
    assert transaction.organization_id == user.organization_id
    assert transaction.transaction_ref == "TXN-NEW-1"
    assert transaction.amount == 5000  # "50" on the form is $50.00: major units
    assert transaction.currency == "usd"
    assert transaction.status == "failed"
    assert transaction.source == "form"
    assert transaction.customer_email == "ann@example.com"
    assert transaction.customer_phone == "+14155550123"
    assert transaction.customer_country == "US"
    assert transaction.failed_at == datetime(2025, 1, 19, tzinfo=UTC)
    assert transaction.meta == {"order_id": "ORD-7"}
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action.startswith("transaction.")))
    assert (event.action, event.transaction_id, event.actor_user_id) == (
        "transaction.created",
        transaction.id,
        user.id,
    )

    page = get(client, response.headers["Location"])
    assert "Transaction TXN-NEW-1 created for $50.00." in page
    assert re.search(r"<strong>Created</strong>.*?by " + re.escape(user.email), page, re.S)


@pytest.mark.parametrize(
    ("amount", "currency", "stored"),
    [
        ("50", "usd", 5000),
        ("19.99", "usd", 1999),
        ("0.29", "usd", 29),
        ("5000", "jpy", 5000),
        ("1.5", "bhd", 1500),
    ],
)
def test_create_amount_is_in_major_units(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, amount: str, currency: str, stored: int
) -> None:
    signed_in("operator")
    response = client.post(
        "/transactions/new", data={"transaction_ref": "T-1", "amount": amount, "currency": currency}
    )
    assert response.status_code == 302
    assert db.session.scalar(select(Transaction.amount)) == stored


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("transaction_ref", "", "This field is required."),
        ("transaction_ref", "has spaces", "Use letters, digits"),
        ("transaction_ref", "x" * 65, "At most 64 characters"),
        ("amount", "", "Amount is required."),
        ("amount", "0", "Amount must be greater than zero."),
        ("amount", "-5", "Amount must be greater than zero."),
        ("amount", "abc", "is not a number"),
        ("amount", "1.001", "USD amounts take at most 2 decimals"),
        ("amount", "1e5", "is not a number"),
        ("currency", "", "Currency is required"),
        ("currency", "ABC", "is not a known ISO 4217 currency code."),
        ("customer_email", "not-an-email", "must have an @-sign"),
        ("customer_phone", "12345", "is not a valid phone number"),
        ("customer_country", "XX", "is not an ISO 3166 two-letter country code"),
        ("customer_locale", "xx-nope", "is not a known locale"),
        ("customer_name", "x" * 201, "At most 200 characters"),
        ("customer_name", "Ann\x1bLee", "Must not contain control characters."),
        ("failure_code", "Card Declined!", "Use lower-case letters"),
        ("failure_message", "x" * 501, "At most 500 characters"),
        ("failed_at", "2999-01-01", "cannot be in the future"),
        ("failed_at", "not a date", "is not a date"),
        ("metadata", "{not json", "Metadata must be a JSON object"),
        ("metadata", '{"a": NaN}', "finite"),
    ],
)
def test_create_refuses_each_bad_field_next_to_it(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, field: str, value: str, message: str
) -> None:
    signed_in("operator")

    response = client.post("/transactions/new", data={**FORM, field: value})

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    error = re.search(rf'<p class="error" id="{field}-error">(.*?)</p>', page, re.S)
    assert error, f"no error next to {field}"
    assert message in html.unescape(error.group(1))
    assert f'aria-describedby="{field}' in page
    assert db.session.scalar(select(func.count()).select_from(Transaction)) == 0
    assert transaction_audits(db) == 0


def test_create_duplicate_ref_is_refused(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    user = signed_in("operator")
    make_transaction(org=user.organization, transaction_ref="TXN-NEW-1", amount=777)

    response = client.post("/transactions/new", data=FORM)

    assert response.status_code == 422
    assert "A transaction with this reference already exists." in response.get_data(as_text=True)
    assert db.session.scalars(select(Transaction.amount)).all() == [777]
    assert transaction_audits(db) == 0


def test_same_ref_in_another_organization_is_fine(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    signed_in("operator")
    make_transaction(transaction_ref="TXN-NEW-1")  # another organization
    assert client.post("/transactions/new", data=FORM).status_code == 302
    assert db.session.scalar(select(func.count()).select_from(Transaction)) == 2


def test_viewer_cannot_create(client: FlaskClient, signed_in: Callable[..., User], db: Any) -> None:
    signed_in("viewer")
    assert client.get("/transactions/new").status_code == 403
    assert client.post("/transactions/new", data=FORM).status_code == 403
    assert db.session.scalar(select(func.count()).select_from(Transaction)) == 0


def test_create_form_renders(client: FlaskClient, signed_in: Callable[..., User]) -> None:
    signed_in("operator")
    response = client.get("/transactions/new")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for name in FORM:
        assert f'name="{name}"' in page
        assert f'<label for="{name}">' in page


# --- edit contact details --------------------------------------------------------


def test_edit_contact_saves_and_audits(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    user = signed_in("operator")
    transaction = make_transaction(
        org=user.organization, transaction_ref="T-EDIT", customer_email="old@example.com", customer_name="Ann"
    )

    response = client.post(
        f"/transactions/{transaction.id}/edit",
        data={
            "customer_name": "Ann",
            "customer_email": "New@Example.com",
            "customer_phone": "020 7946 0958",
            "customer_country": "GB",
            "customer_locale": "en-GB",
        },
    )

    assert response.status_code == 302
    db.session.expire_all()
    saved = db.session.get(Transaction, transaction.id)
    assert saved.customer_email == "new@example.com"
    assert saved.customer_phone == "+442079460958"
    assert (saved.customer_country, saved.customer_locale, saved.customer_name) == ("GB", "en-GB", "Ann")
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "transaction.contact_updated"))
    assert event.actor_user_id == user.id
    assert event.transaction_id == transaction.id
    assert event.details["changes"]["customer_email"] == ["old@example.com", "new@example.com"]
    assert "customer_name" not in event.details["changes"]

    page = get(client, f"/transactions/{transaction.id}")
    assert "Contact details saved." in page
    timeline = page[page.index("<h2>Timeline</h2>") :]
    assert re.search(
        r"<strong>Contact details changed</strong> — .*?email: old@example.com → new@example.com.*?by "
        + re.escape(user.email),
        timeline,
        re.S,
    )


def test_edit_contact_bad_phone_changes_nothing(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    user = signed_in("operator")
    transaction = make_transaction(
        org=user.organization,
        transaction_ref="T-EDIT",
        customer_email="old@example.com",
        customer_phone="+14155550123",
    )

    response = client.post(
        f"/transactions/{transaction.id}/edit",
        data={"customer_email": "new@example.com", "customer_phone": "12"},
    )

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    error = re.search(r'<p class="error" id="customer_phone-error">(.*?)</p>', page, re.S)
    assert error and "is not a phone number" in html.unescape(error.group(1))
    db.session.expire_all()
    saved = db.session.get(Transaction, transaction.id)
    assert (saved.customer_email, saved.customer_phone) == ("old@example.com", "+14155550123")
    assert transaction_audits(db) == 0


def test_edit_contact_without_changes_writes_no_audit(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    user = signed_in("operator")
    transaction = make_transaction(org=user.organization, customer_email="same@example.com")
    response = client.post(
        f"/transactions/{transaction.id}/edit", data={"customer_email": "SAME@example.com"}
    )
    assert response.status_code == 302
    assert "Nothing changed." in get(client, response.headers["Location"])
    assert transaction_audits(db) == 0


def test_edit_form_is_prefilled(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("operator")
    transaction = make_transaction(
        org=user.organization, customer_email="pre@example.com", customer_country="DE"
    )
    page = get(client, f"/transactions/{transaction.id}/edit")
    assert 'value="pre@example.com"' in page
    assert 'value="DE"' in page


def test_viewer_cannot_edit(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    user = signed_in("viewer")
    transaction = make_transaction(org=user.organization, customer_email="old@example.com")
    response = client.post(f"/transactions/{transaction.id}/edit", data={"customer_email": "new@example.com"})
    assert response.status_code == 403
    db.session.expire_all()
    assert db.session.get(Transaction, transaction.id).customer_email == "old@example.com"
