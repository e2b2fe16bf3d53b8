"""The transactions API: create, list with filters and cursors, get by reference."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from recovery import create_app
from recovery.extensions import db as _db
from recovery.models import AuditEvent, RecoveryAttempt, Transaction
from recovery.transactions import services
from tests.conftest import base_config, bearer


@pytest.fixture
def api(client, make_token, org) -> Any:
    """A client that calls the API with an operator token of `org`."""
    _, raw = make_token(org=org, role="operator", name="Billing")

    def call(method: str, url: str, **kwargs: Any) -> Any:
        return client.open(url, method=method, headers={**bearer(raw), **kwargs.pop("headers", {})}, **kwargs)

    return call


VALID = {"transaction_ref": "TXN-001", "amount": 5000, "currency": "usd"}


def count(db: Any) -> int:
    return db.session.query(Transaction).count()


# --- create ------------------------------------------------------------------------


def test_create_answers_201_with_the_transaction_and_its_location(api, db, org):
    body = {
        **VALID,
        "currency": "USD",
        "failure_code": "insufficient_funds",
        "failure_message": "Your card has insufficient funds.",
        "customer_name": "Ada Lovelace",
        "customer_email": "Ada@Example.com",
        "customer_phone": "+44 20 7946 0958",
        "customer_country": "gb",
        "customer_locale": "en-GB",
        "metadata": {"order_id": "ORD-123"},
        "failed_at": "2025-01-19T10:00:00+01:00",
    }

    response = api("POST", "/v1/transactions", json=body)

    assert response.status_code == 201, response.json
    assert response.headers["Location"] == "/v1/transactions/TXN-001"
    data = response.json
    assert data["object"] == "transaction"
    assert {k: data[k] for k in body} == {
        **body,
        "currency": "usd",
        "customer_email": "ada@example.com",
        "customer_phone": "+442079460958",
        "customer_country": "GB",
        "failed_at": "2025-01-19T09:00:00Z",
    }
    assert (data["status"], data["source"], data["recovered_at"]) == ("failed", "api", None)
    assert data["created_at"].endswith("Z")
    assert data["recovery_attempts"] == []
    assert data["stripe_checkout_session_id"] is None
    stored = db.session.query(Transaction).one()
    assert (stored.organization_id, stored.amount, stored.source) == (org.id, 5000, "api")
    assert api("GET", response.headers["Location"]).json == data


@pytest.mark.parametrize(
    ("amount_decimal", "currency", "minor"),
    [("50.00", "usd", 5000), ("50", "usd", 5000), ("5000", "jpy", 5000), ("1.234", "bhd", 1234)],
)
def test_amount_decimal_is_in_major_units(api, amount_decimal, currency, minor):
    body = {"transaction_ref": "DEC-1", "amount_decimal": amount_decimal, "currency": currency}

    response = api("POST", "/v1/transactions", json=body)

    assert response.status_code == 201, response.json
    assert (response.json["amount"], response.json["currency"]) == (minor, currency)


def test_a_duplicate_ref_is_409(api, db):
    assert api("POST", "/v1/transactions", json=VALID).status_code == 201

    response = api("POST", "/v1/transactions", json={**VALID, "amount": 7000})

    assert response.status_code == 409
    assert response.json == {
        "error": {
            "type": "conflict",
            "message": "A transaction with transaction_ref 'TXN-001' already exists.",
        }
    }
    assert count(db) == 1


def test_the_same_ref_in_another_organization_is_fine(api, client, make_token, db):
    _, other = make_token()
    assert api("POST", "/v1/transactions", json=VALID).status_code == 201

    assert client.post("/v1/transactions", headers=bearer(other), json=VALID).status_code == 201
    assert count(db) == 2


INVALID = [
    ({"amount": -5000}, "amount", "greater than zero"),
    ({"amount": 0}, "amount", "greater than zero"),
    ({"amount": 50.0}, "amount", "Must be a whole number"),
    ({"amount": "5000"}, "amount", "Must be a whole number"),
    ({"amount": True}, "amount", "Must be a whole number"),
    ({"amount": None}, "amount", "Amount is required."),
    ({"amount": 10**15}, "amount", "too large"),
    ({"amount_decimal": "50.001"}, "amount", "Give amount (a whole number of the currency's smallest unit"),
    ({"amount": None, "amount_decimal": "50.001"}, "amount_decimal", "USD amounts take at most 2 decimals"),
    ({"amount": None, "amount_decimal": 50.5}, "amount_decimal", "Must be a string with the"),
    ({"amount": None, "amount_decimal": "fifty"}, "amount_decimal", "is not a number"),
    ({"currency": "xyz"}, "currency", "not a known ISO 4217 currency code"),
    ({"currency": "dem"}, "currency", "DEM is not a currency Stripe can charge cards in."),
    ({"currency": None}, "currency", "Currency is required"),
    ({"currency": 840}, "currency", "Must be a string."),
    ({"transaction_ref": ""}, "transaction_ref", "This field is required."),
    ({"transaction_ref": "has space"}, "transaction_ref", "Use letters, digits"),
    ({"transaction_ref": "x" * 65}, "transaction_ref", "At most 64 characters"),
    ({"transaction_ref": 12}, "transaction_ref", "Must be a string."),
    ({"customer_email": "not-an-email"}, "customer_email", "@"),
    ({"customer_phone": "12345"}, "customer_phone", "not a phone number"),
    ({"customer_phone": "+1 555 0100"}, "customer_phone", "not a valid phone number"),
    ({"customer_country": "XX"}, "customer_country", "ISO 3166"),
    ({"customer_locale": "zz-QQ-nope"}, "customer_locale", "not a known locale"),
    ({"failure_code": "Card Declined!"}, "failure_code", "lower-case letters"),
    ({"failed_at": "yesterday"}, "failed_at", "use ISO 8601"),
    ({"failed_at": "2999-01-01"}, "failed_at", "cannot be in the future"),
    ({"metadata": "{}"}, "metadata", "Must be a JSON object"),
    ({"metadata": [1]}, "metadata", "Must be a JSON object"),
    ({"metadata": {"nested": {"a": 1}}}, "metadata", "strings, numbers or booleans"),
    ({"status": "recovered"}, "status", "Unknown field."),
    ({"stripe_customer_id": "cus_1"}, "stripe_customer_id", "Unknown field."),
]


@pytest.mark.parametrize(("change", "field", "message"), INVALID)
def test_invalid_fields_are_422_with_a_message_per_field(api, db, change, field, message):
    response = api("POST", "/v1/transactions", json={**VALID, **change})

    assert response.status_code == 422, response.json
    error = response.json["error"]
    assert error["type"] == "validation_error"
    assert field in error["message"]
    assert message in error["fields"][field]
    assert count(db) == 0


def test_every_bad_field_is_reported_at_once(api, db):
    body = {"transaction_ref": "", "amount": 1.5, "currency": "usd", "customer_email": "x@", "colour": "red"}

    response = api("POST", "/v1/transactions", json=body)

    assert response.status_code == 422
    error = response.json["error"]
    assert error["message"] == "Unknown fields: colour. Not valid: transaction_ref, customer_email, amount."
    assert set(error["fields"]) == {"colour", "amount", "transaction_ref", "customer_email"}
    assert "Must be a whole number" in error["fields"]["amount"]

    del body["colour"], body["amount"]
    response = api("POST", "/v1/transactions", json={**body, "amount_decimal": 7})
    assert set(response.json["error"]["fields"]) == {"transaction_ref", "customer_email", "amount_decimal"}

    response = api("POST", "/v1/transactions", json={**body, "amount_decimal": "7.001"})
    assert set(response.json["error"]["fields"]) == {"transaction_ref", "customer_email", "amount_decimal"}
    assert count(db) == 0


@pytest.mark.parametrize(
    ("data", "content_type", "status", "message"),
    [
        ("[1, 2]", "application/json", 400, "must be a JSON object ({...}), not an array"),
        ('"text"', "application/json", 400, "not a string"),
        ("null", "application/json", 400, "not null"),
        ("{", "application/json", 400, "not valid JSON: Expecting property name"),
        ('{"amount": NaN}', "application/json", 400, "NaN is not valid JSON"),
        (b'{"a": "\xff"}', "application/json", 400, "not valid JSON"),
        ("", "application/json", 400, "body is empty"),
        (
            "transaction_ref=T&amount=5000",
            "application/x-www-form-urlencoded",
            415,
            "Content-Type: application/json",
        ),
        ('{"transaction_ref": "T"}', "text/plain", 415, "Content-Type: application/json"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(api, db, data, content_type, status, message):
    response = api("POST", "/v1/transactions", data=data, content_type=content_type)

    assert response.status_code == status
    assert set(response.json["error"]) == {"type", "message"}
    assert message in response.json["error"]["message"]
    assert count(db) == 0


def test_a_huge_body_is_413_json(api, db):
    response = api("POST", "/v1/transactions", json={**VALID, "failure_message": "x" * 70_000})

    assert response.status_code == 413
    assert response.json["error"]["type"] == "request_entity_too_large"
    assert count(db) == 0


# --- list ------------------------------------------------------------------------------


def refs(response: Any) -> list[str]:
    assert response.status_code == 200, response.json
    return [t["transaction_ref"] for t in response.json["data"]]


def test_list_walks_every_page_forwards_without_duplicates_or_gaps(api, make_transaction, org):
    start = datetime(2025, 1, 1, tzinfo=UTC)
    # Pairs share a failed_at so that the cursor's id tiebreak matters.
    made = [make_transaction(org=org, failed_at=start + timedelta(hours=i // 2)) for i in range(23)]
    expected = [t.transaction_ref for t in sorted(made, key=lambda t: (t.failed_at, t.id), reverse=True)]

    seen: list[str] = []
    url = "/v1/transactions?limit=5"
    pages = 0
    while True:
        body = api("GET", url).json
        pages += 1
        assert body["object"] == "list"
        seen += [t["transaction_ref"] for t in body["data"]]
        if not body["has_more"]:
            assert body["next_cursor"] is None
            break
        url = f"/v1/transactions?limit=5&after={body['next_cursor']}"

    assert pages == 5
    assert seen == expected
    back = api("GET", f"/v1/transactions?limit=5&before={body['prev_cursor']}").json
    assert [t["transaction_ref"] for t in back["data"]] == expected[15:20]


def test_list_by_amount_ascending(api, make_transaction, org):
    for ref, amount in (("A", 300), ("B", 100), ("C", 200), ("D", 100)):
        make_transaction(org=org, transaction_ref=ref, amount=amount)

    first = api("GET", "/v1/transactions?currency=usd&sort=amount&order=asc&limit=2").json
    second = api(
        "GET", f"/v1/transactions?currency=usd&sort=amount&order=asc&limit=2&after={first['next_cursor']}"
    ).json

    assert [t["transaction_ref"] for t in first["data"] + second["data"]] == ["B", "D", "C", "A"]
    assert (first["has_more"], second["has_more"]) == (True, False)


def test_list_filters(api, db, make_transaction, org):
    day = datetime(2025, 3, 10, 12, tzinfo=UTC)
    make_transaction(org=org, transaction_ref="USD-OLD", currency="usd", failed_at=day - timedelta(days=5))
    make_transaction(org=org, transaction_ref="EUR-DAY", currency="eur", failed_at=day)
    recovered = make_transaction(
        org=org, transaction_ref="USD-DAY", currency="usd", failed_at=day, customer_email="pat@example.com"
    )
    recovered.status = "recovered"
    db.session.commit()

    assert refs(api("GET", "/v1/transactions?currency=EUR")) == ["EUR-DAY"]
    assert refs(api("GET", "/v1/transactions?status=recovered")) == ["USD-DAY"]
    assert refs(api("GET", "/v1/transactions?q=PAT@example.com")) == ["USD-DAY"]
    assert refs(api("GET", "/v1/transactions?q=USD-OLD")) == ["USD-OLD"]
    assert sorted(refs(api("GET", "/v1/transactions?date_from=2025-03-10&date_to=2025-03-10"))) == [
        "EUR-DAY",
        "USD-DAY",
    ]
    assert refs(api("GET", "/v1/transactions?date_to=2025-03-09")) == ["USD-OLD"]


def test_list_filters_by_why_it_failed(api, db, make_transaction, org):
    codes = {"SOFT": "insufficient_funds", "STOLEN": "stolen_card", "NONE": None, "ODD": "x_y"}
    for ref, code in codes.items():
        make_transaction(org=org, transaction_ref=ref, failure_code=code)

    assert refs(api("GET", "/v1/transactions?category=retry_later")) == ["SOFT"]
    assert refs(api("GET", "/v1/transactions?category=do_not_contact")) == ["STOLEN"]
    assert sorted(refs(api("GET", "/v1/transactions?category=unknown"))) == ["NONE", "ODD"]
    assert api("GET", "/v1/transactions?category=customer_action").json["data"] == []
    refused = api("GET", "/v1/transactions?category=stolen")
    assert refused.status_code == 422 and "category" in refused.json["error"]["fields"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=lost", "status"),
        ("currency=dollars", "currency"),
        ("date_from=10/03/2025", "date_from"),
        ("date_to=2025-13-01", "date_to"),
        ("sort=customer", "sort"),
        ("order=up", "order"),
        ("after=not-a-cursor", "after"),
        ("before=bm9wZQ", "before"),
        ("after=" + base64.urlsafe_b64encode(b"[" * 1000).decode(), "after"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("page=2", "page"),
    ],
)
def test_bad_list_parameters_are_422(api, query, field):
    response = api("GET", f"/v1/transactions?{query}")

    assert response.status_code == 422
    assert response.json["error"]["type"] == "validation_error"
    assert field in response.json["error"]["fields"]


def test_a_cursor_of_another_sort_is_refused(api, make_transaction, org):
    for _ in range(3):
        make_transaction(org=org)
    cursor = api("GET", "/v1/transactions?limit=1").json["next_cursor"]

    response = api("GET", f"/v1/transactions?currency=usd&sort=amount&after={cursor}")

    assert response.status_code == 422
    assert "after" in response.json["error"]["fields"]


@pytest.mark.parametrize(("limit", "size"), [("1", 1), ("100", 100), (None, 50)])
def test_limit_bounds(api, db, org, limit, size):
    db.session.add_all(
        Transaction(organization_id=org.id, transaction_ref=f"BULK-{i}", amount=100, currency="usd")
        for i in range(101)
    )
    db.session.commit()

    body = api("GET", "/v1/transactions" + (f"?limit={limit}" if limit else "")).json

    assert len(body["data"]) == size
    assert body["has_more"] is True


def test_viewer_tokens_may_read(client, make_token, make_transaction, org):
    _, raw = make_token(org=org, role="viewer")
    make_transaction(org=org, transaction_ref="READ-1")

    assert refs(client.get("/v1/transactions", headers=bearer(raw))) == ["READ-1"]
    assert client.get("/v1/transactions/READ-1", headers=bearer(raw)).status_code == 200


# --- get by reference --------------------------------------------------------------------


def test_get_includes_stripe_fields_and_recovery_attempts(api, db, make_transaction, org):
    expires = datetime(2025, 1, 20, 10, tzinfo=UTC)
    transaction = make_transaction(
        org=org,
        transaction_ref="ORD:42#1",
        stripe_checkout_session_id="cs_test_1",
        stripe_payment_intent_id="pi_1",
        stripe_customer_id="cus_1",
        stripe_payment_link_id="plink_1",
        payment_link_url="https://buy.stripe.com/test_1",
        checkout_url="https://checkout.stripe.com/c/pay/cs_test_1",
        checkout_expires_at=expires,
    )
    attempt = RecoveryAttempt(
        organization_id=org.id,
        transaction_id=transaction.id,
        channel="email",
        token="secret-customer-link-token",
        status="notified",
        expires_at=expires,
        messages_sent=1,
        next_send_at=expires - timedelta(days=1),
    )
    db.session.add(attempt)
    db.session.commit()

    response = api("GET", "/v1/transactions/ORD:42%231")

    assert response.status_code == 200
    data = response.json
    assert {
        k: data[k] for k in ("stripe_checkout_session_id", "stripe_payment_intent_id", "stripe_customer_id")
    } == {
        "stripe_checkout_session_id": "cs_test_1",
        "stripe_payment_intent_id": "pi_1",
        "stripe_customer_id": "cus_1",
    }
    assert data["stripe_payment_link_id"] == "plink_1"
    assert data["payment_link_url"] == "https://buy.stripe.com/test_1"
    assert data["checkout_url"] == "https://checkout.stripe.com/c/pay/cs_test_1"
    assert data["checkout_expires_at"] == "2025-01-20T10:00:00Z"
    [sent] = data["recovery_attempts"]
    assert sent == {
        "id": attempt.id,
        "channel": "email",
        "status": "notified",
        "expires_at": "2025-01-20T10:00:00Z",
        "max_retries": 3,
        "messages_sent": 1,
        "next_send_at": "2025-01-19T10:00:00Z",
        "created_at": sent["created_at"],
        "completed_at": None,
    }
    assert "secret-customer-link-token" not in response.get_data(as_text=True)


def test_get_unknown_or_another_organizations_ref_is_404(api, make_transaction, make_org):
    make_transaction(org=make_org(), transaction_ref="THEIRS-1")

    for ref in ("THEIRS-1", "NOPE"):
        response = api("GET", f"/v1/transactions/{ref}")
        assert response.status_code == 404
        assert response.json == {"error": {"type": "not_found", "message": "Transaction not found"}}


# --- errors outside the views are JSON too ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "status", "kind"),
    [
        ("GET", "/v1/no-such-thing", 404, "not_found"),
        ("GET", "/v1", 404, "not_found"),
        ("DELETE", "/v1/transactions", 405, "method_not_allowed"),
        ("PUT", "/v1/transactions/TXN-1", 405, "method_not_allowed"),
    ],
)
def test_routing_errors_under_v1_are_json(api, method, url, status, kind):
    response = api(method, url)

    assert response.status_code == status
    assert response.json["error"]["type"] == kind
    assert response.json["error"]["message"]
    if status == 405:
        assert "GET" in response.headers["Allow"]


@pytest.fixture
def development_app(app: Flask, database_url: str, redis_url: str) -> Any:
    """The app as in development: unhandled errors reach the error handler (not the test)."""
    dev = create_app(base_config(database_url, redis_url, APP_ENV="development"))
    yield dev
    with dev.app_context():
        _db.engine.dispose()


def test_an_unexpected_error_is_a_json_500(development_app, make_token, monkeypatch):
    _, raw = make_token(role="viewer")

    def broken(*args: Any) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(services, "get_by_ref", broken)
    response = development_app.test_client().get("/v1/transactions/TXN-1", headers=bearer(raw))

    assert response.status_code == 500
    assert response.json == {
        "error": {"type": "internal_error", "message": "Something went wrong on our side."}
    }


def test_create_is_audited_with_the_token(api, db):
    api("POST", "/v1/transactions", json=VALID)

    [event] = db.session.query(AuditEvent).filter_by(action="transaction.created").all()
    assert event.actor_label == "API token Billing"
    assert event.target_id == "TXN-001"
