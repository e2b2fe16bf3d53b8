"""Input that validates as text but that the database cannot hold, or that overflows a conversion.

Each once answered 500, or (a date past year 9999 after its offset) failed a
whole CSV import for good; now each is a clear refusal, and its valid
neighbours are kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.models import CheckoutSession, Organization, Transaction, User
from tests.conftest import bearer, csrf_token
from tests.fixtures.csvdata import csv_bytes, row
from tests.fixtures.imports import problems, the_import, upload

VALID = {"transaction_ref": "TXN-EDGE", "amount": 5000, "currency": "usd"}


@pytest.fixture
def api(client: FlaskClient, make_token: Any, org: Organization) -> Callable[..., Any]:
    _, raw = make_token(org=org, role="operator")

    def call(method: str, url: str, **kwargs: Any) -> Any:
        return client.open(url, method=method, headers=bearer(raw), **kwargs)

    return call


@pytest.mark.parametrize(
    ("failed_at", "message"),
    [
        ("0001-01-01T00:00:00+01:00", "implausibly old"),  # before UTC: year 0
        ("9999-12-31T23:00:00-05:00", "cannot be in the future"),  # after UTC: year 10000
    ],
)
def test_a_date_whose_offset_leaves_the_calendar_is_refused(api, db, failed_at, message):
    response = api("POST", "/v1/transactions", json={**VALID, "failed_at": failed_at})

    assert response.status_code == 422
    assert message in response.get_json()["error"]["fields"]["failed_at"]
    assert db.session.scalar(select(Transaction.id)) is None


def test_such_a_date_in_a_csv_is_one_invalid_row_not_a_failed_import(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("owner")
    records = [row(1), row(2, failed_at="9999-12-31T23:00:00-05:00"), row(3)]

    response = upload(client, csv_bytes(records))

    assert response.status_code == 302
    csv_import = the_import(db)
    assert (csv_import.status, csv_import.imported_rows, csv_import.invalid_rows) == ("done", 2, 1)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    [(line, ref, reason)] = problems(page)
    assert (line, ref) == (3, "CSV-000002") and "cannot be in the future" in reason


@pytest.mark.parametrize(
    "body",
    [
        {**VALID, "customer_name": "\ud800x"},  # a lone surrogate: no encoding can store it
        {**VALID, "failure_message": "bad \ud800"},
        {**VALID, "metadata": {"order_id": "\ud800"}},
        {**VALID, "metadata": {"k\u001b": "v"}},
    ],
)
def test_text_no_database_can_store_is_refused_with_the_field(api, db, body):
    payload = json.dumps(body)  # escapes the surrogate, as any JSON client would send it

    response = api("POST", "/v1/transactions", data=payload, content_type="application/json")

    assert response.status_code == 422
    [field] = response.get_json()["error"]["fields"]
    assert field in body and field != "transaction_ref"
    assert db.session.scalar(select(Transaction.id)) is None


@pytest.mark.parametrize(
    "path", ["/v1/payments/stripe/checkout-sessions", "/v1/payments/stripe/payment-links", "/v1/recoveries"]
)
def test_a_reference_no_transaction_can_have_is_not_found(api, path):
    payload = json.dumps({"transaction_ref": "TXN-\ud800"})

    response = api("POST", path, data=payload, content_type="application/json")

    assert response.status_code == 404
    assert response.get_json()["error"]["message"] == "Transaction not found"


@pytest.mark.parametrize("metadata", [{"order_id": "\ud800"}, {"\ud800": "x"}, {"note": "a\u001bb"}])
def test_checkout_metadata_stripe_cannot_be_sent_is_refused_before_anything_is_saved(
    api, db, org, make_transaction, metadata
):
    make_transaction(org, transaction_ref="TXN-META")
    payload = json.dumps({"transaction_ref": "TXN-META", "metadata": metadata})

    response = api(
        "POST", "/v1/payments/stripe/checkout-sessions", data=payload, content_type="application/json"
    )

    assert response.status_code == 422
    assert list(response.get_json()["error"]["fields"]) == ["metadata"]
    assert db.session.scalar(select(CheckoutSession.id)) is None


@pytest.mark.parametrize("depth", [0, 700])
def test_a_nul_in_a_json_body_is_refused(api, db, depth):
    nested: Any = "a\u0000b"
    for _ in range(depth):  # deeper than a recursive walk of the body could go
        nested = [nested]
    response = api("POST", "/v1/transactions", json={**VALID, "metadata": {"deep": nested}})

    assert response.status_code == 422
    assert "NUL" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "url",
    [
        "/v1/transactions/TXN%00",
        "/v1/transactions?q=a%00",
        "/v1/payments/stripe/sessions/cs_%00/status",
    ],
)
def test_a_nul_in_an_api_url_is_a_400(api, url):
    response = api("GET", url)

    assert response.status_code == 400
    assert "NUL" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "url",
    ["/transactions?q=a%00", "/transactions/by-ref/a%00", "/pay/ab%00c", "/pay/cancel?t=a%00"],
)
def test_a_nul_in_a_page_url_is_a_400(client: FlaskClient, signed_in: Callable[..., User], url):
    signed_in("owner")

    assert client.get(url).status_code == 400


@pytest.mark.parametrize("url", ["/transactions/99999999999999999999", "/imports/99999999999999999999"])
def test_an_id_past_bigint_is_404(client: FlaskClient, signed_in: Callable[..., User], url):
    signed_in("owner")

    assert client.get(url).status_code == 404


def test_a_multi_line_failure_message_from_the_form_keeps_its_lines(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("owner")
    page = client.get("/transactions/new")

    response = client.post(
        "/transactions/new",
        data={
            "csrf_token": csrf_token(page.get_data(as_text=True)),
            "transaction_ref": "TXN-LINES",
            "amount": "50.00",
            "currency": "usd",
            "failure_message": "Declined.\r\nCall your bank.",  # browsers send CRLF
        },
    )

    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    stored = db.session.scalar(select(Transaction.failure_message))
    assert stored == "Declined.\nCall your bank."
