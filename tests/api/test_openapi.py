"""The OpenAPI document (/v1/openapi.json): valid OpenAPI 3.1, complete, and true of the real answers.

Each scenario drives an endpoint through the Flask test client against a real
database and the Stripe sandbox, then checks every answer (status, headers,
body) against the document with openapi-core; at its end it asserts that every
status the document lists for the endpoint was seen, so neither an
undocumented answer nor a documented one that never happens goes unnoticed.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_spec_validator import OpenAPIV31SpecValidator
from werkzeug.test import TestResponse
from werkzeug.wrappers import Request

from recovery.api.openapi import build_document, document, is_api_rule, openapi_path
from recovery.config import forget_settings
from recovery.models import Organization, Role, Transaction, TransactionStatus
from recovery.webhooks import receiver
from tests.conftest import bearer
from tests.fixtures import stripe_events as se

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture
def app_config(stripe_sandbox: Any) -> dict[str, Any]:
    stripe_sandbox.reset()
    return {
        "STRIPE_SECRET_KEY": stripe_sandbox.api_key,
        "STRIPE_API_BASE": stripe_sandbox.base_url,
        "STRIPE_WEBHOOK_SECRET": se.SECRET,
        "BASE_URL": "http://localhost",
    }


def _request(response: TestResponse, body: bytes = b"") -> WerkzeugOpenAPIRequest:
    """The request of `response` for openapi-core: the app has read its body, so give it again."""
    environ = dict(response.request.environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return WerkzeugOpenAPIRequest(Request(environ))


class Checker:
    """Checks answers against the document and counts which (operation, status) pairs were seen."""

    def __init__(self, app: Flask) -> None:
        self.document = document(app)
        self.openapi = OpenAPI.from_dict(self.document)
        self.seen: dict[str, set[str]] = defaultdict(set)
        self.operations = {
            entry["operationId"]: entry
            for methods in self.document["paths"].values()
            for method, entry in methods.items()
            if method in HTTP_METHODS
        }

    def __call__(self, operation_id: str, response: TestResponse, status: int) -> TestResponse:
        assert response.status_code == status, response.get_data(as_text=True)
        result = self.openapi.unmarshal_response(_request(response), WerkzeugOpenAPIResponse(response))
        assert not result.errors, (operation_id, status, result.errors, response.get_data(as_text=True))
        self.seen[operation_id].add(str(status))
        return response

    def valid_request(self, operation_id: str, response: TestResponse, body: Any = None) -> None:
        """The request the client sent fits the document too (valid input must be documented as valid)."""
        sent = b"" if body is None else json.dumps(body).encode()
        result = self.openapi.unmarshal_request(_request(response, sent))
        assert not result.errors, (operation_id, result.errors)

    def assert_covered(self, operation_id: str, not_driven: dict[str, str] | None = None) -> None:
        """Every documented status of the operation was answered here (or is excused, with why)."""
        documented = set(self.operations[operation_id]["responses"])
        excused = set(not_driven or {})
        assert excused <= documented, f"excused statuses not in the document: {excused - documented}"
        missing = documented - excused - self.seen[operation_id]
        assert not missing, (
            f"{operation_id}: documented statuses never answered in this test: {sorted(missing)}"
        )


@pytest.fixture
def check(app: Flask) -> Checker:
    return Checker(app)


@pytest.fixture
def tokens(make_token: Any, org: Organization) -> dict[str, dict[str, str]]:
    """Headers for a token of each role in `org`, and none."""
    headers = {role.value: bearer(make_token(org=org, role=role)[1]) for role in (Role.VIEWER, Role.OPERATOR)}
    headers["none"] = {}
    return headers


def bad_requests(
    client: FlaskClient, path: str, headers: dict[str, str]
) -> Iterator[tuple[int, TestResponse]]:
    """The answers every JSON body reader gives: not JSON, not JSON typed, too big."""
    yield 400, client.post(path, data="{not json", headers=headers, content_type="application/json")
    yield 415, client.post(path, data="transaction_ref=X", headers=headers, content_type="text/plain")
    yield (
        413,
        client.post(path, data="[" + " " * 70_000 + "]", headers=headers, content_type="application/json"),
    )


# --- the document ---------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1(app: Flask) -> None:
    doc = document(app)
    assert doc["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(doc).validate()


def test_every_v1_route_is_in_the_document_and_nothing_else(app: Flask) -> None:
    paths = document(app)["paths"]
    routed = set()
    for rule in app.url_map.iter_rules():
        if not is_api_rule(rule):
            continue
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            routed.add((openapi_path(rule), method.lower()))
    assert routed, "no /v1 routes found"
    documented = {(path, method) for path, methods in paths.items() for method in methods}
    undocumented = routed - documented
    assert not undocumented, f"add @documented(...) to these /v1 views: {sorted(undocumented)}"
    # The webhook is answered below Flask (recovery/webhooks/receiver.py), so not in the URL map.
    assert documented - routed == {(receiver.PATH, "post")}


def test_roles_and_authentication_come_from_the_code(app: Flask) -> None:
    paths = document(app)["paths"]
    create = paths["/v1/transactions"]["post"]
    assert create["x-required-role"] == "operator"
    assert create["security"] == [{"bearerAuth": []}]
    assert {"401", "403", "422"} <= set(create["responses"])
    listing = paths["/v1/transactions"]["get"]
    assert listing["x-required-role"] == "viewer"
    assert "403" not in listing["responses"]  # every token may read
    assert {p["name"] for p in listing["parameters"]} >= {"status", "limit", "after", "before"}
    one = paths["/v1/recoveries/{attempt_id}"]["get"]["parameters"][0]
    assert (one["in"], one["schema"]["type"]) == ("path", "integer")
    assert paths["/v1/openapi.json"]["get"]["security"] == []
    webhook = paths[receiver.PATH]["post"]
    assert webhook["security"] == []
    assert any(p["name"] == "Stripe-Signature" and p["required"] for p in webhook["parameters"])


def test_every_operation_has_a_declared_tag(app: Flask) -> None:
    """The reference page groups by tag, in the order of recovery.api.openapi.TAGS."""
    doc = document(app)
    declared = {tag["name"] for tag in doc["tags"]}
    used = {entry["tags"][0] for methods in doc["paths"].values() for entry in methods.values()}
    assert used <= declared, f"add these to TAGS: {used - declared}"


def test_request_schemas_are_the_fields_the_views_accept(app: Flask) -> None:
    from recovery.api.transactions import CREATE_FIELDS, LIST_ARGS
    from recovery.payments.api import CHECKOUT_FIELDS, LINK_FIELDS
    from recovery.recoveries.api import START_FIELDS

    schemas = document(app)["components"]["schemas"]
    assert set(schemas["TransactionCreate"]["properties"]) == CREATE_FIELDS
    assert set(schemas["CheckoutSessionCreate"]["properties"]) == CHECKOUT_FIELDS
    assert set(schemas["PaymentLinkCreate"]["properties"]) == LINK_FIELDS
    assert set(schemas["RecoveryStart"]["properties"]) == START_FIELDS
    params = {p["name"] for p in document(app)["paths"]["/v1/transactions"]["get"]["parameters"]}
    assert params == LIST_ARGS
    # SPEC.md's fixed shapes.
    assert set(schemas["CheckoutSessionCreated"]["required"]) == {
        "session_id",
        "payment_intent_id",
        "checkout_url",
        "expires_at",
    }
    assert set(schemas["PaymentLinkCreated"]["required"]) == {
        "payment_link_id",
        "url",
        "product_id",
        "price_id",
    }


def _schema_validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    # The refs point into the document's components: validate with them at the root.
    root = {**schema, "components": doc["components"]}
    return jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_every_example_fits_its_schema(app: Flask) -> None:
    doc = document(app)
    checked = 0
    for methods in doc["paths"].values():
        for entry in methods.values():
            bodies = [entry.get("requestBody", {}).get("content", {}).get("application/json", {})]
            bodies += [r.get("content", {}).get("application/json", {}) for r in entry["responses"].values()]
            for body in bodies:
                if "example" in body:
                    _schema_validator(doc, body["schema"]).validate(body["example"])
                    checked += 1
    assert checked > 20


def test_the_reference_page_examples_fit_their_schemas(app: Flask) -> None:
    """The page makes an example for answers that declare none; those must fit too."""
    from recovery.api.reference import example_of

    doc = document(app)
    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        if name == "OpenApiDocument":
            continue
        _schema_validator(doc, schema).validate(example_of(schema, schemas))


def test_openapi_json_is_public_cached_and_the_same_document(
    app: Flask, client: FlaskClient, check: Checker
) -> None:
    response = check("openapi_openapi_json", client.get("/v1/openapi.json"), 200)
    assert response.json == json.loads(json.dumps(document(app)))
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert document(app) is document(app)  # built once per app
    assert response.json["servers"] == [{"url": "http://localhost"}]
    check.assert_covered("openapi_openapi_json")


def test_the_document_holds_no_organization_data(
    app: Flask, client: FlaskClient, make_transaction: Any, org: Organization
) -> None:
    make_transaction(org, transaction_ref="SECRET-REF-77", customer_email="secret@example.com")
    text = client.get("/v1/openapi.json").get_data(as_text=True)
    assert "SECRET-REF-77" not in text and "secret@example.com" not in text and org.name not in text


def test_every_operation_has_a_scenario_here(app: Flask) -> None:
    """A new endpoint gets its real answers checked below: its operationId must appear in this file."""
    source = Path(__file__).read_text()
    operations = [e["operationId"] for methods in document(app)["paths"].values() for e in methods.values()]
    assert not [op for op in operations if f'"{op}"' not in source]


def test_a_new_undocumented_v1_route_is_caught(app: Flask) -> None:
    # The guard itself: a /v1 view without a declaration is missing from the document.
    from flask import Blueprint

    fresh = Flask("probe")
    fresh.config["BASE_URL"] = "http://localhost"
    bp = Blueprint("probe", __name__, url_prefix="/v1")
    bp.add_url_rule("/widgets", "widgets", lambda: "")
    fresh.register_blueprint(bp)
    assert "/v1/widgets" not in build_document(fresh)["paths"]


# --- real answers: transactions -----------------------------------------------------


def test_transaction_answers_match_the_document(
    client: FlaskClient,
    check: Checker,
    tokens: dict[str, dict[str, str]],
    make_org: Any,
    make_transaction: Any,
) -> None:
    operator, viewer = tokens["operator"], tokens["viewer"]
    create = "api_create_transaction"
    body = {
        "transaction_ref": "TXN-OA-1",
        "amount": 5000,
        "currency": "usd",
        "failure_code": "insufficient_funds",
        "customer_email": "ada@example.com",
        "customer_phone": "+442079460958",
        "metadata": {"order_id": "ORD-1", "n": 3, "gift": True},
        "failed_at": "2025-01-19T10:00:00Z",
    }
    created = check(create, client.post("/v1/transactions", json=body, headers=operator), 201)
    check.valid_request(create, created, body)
    decimal = {"transaction_ref": "TXN-OA-2", "amount_decimal": "12.50", "currency": "usd"}
    check.valid_request(
        create, check(create, client.post("/v1/transactions", json=decimal, headers=operator), 201), decimal
    )
    check(create, client.post("/v1/transactions", json=body, headers=operator), 409)
    check(create, client.post("/v1/transactions", json=body), 401)
    check(
        create, client.post("/v1/transactions", json=body, headers={"Authorization": "Bearer rcv_nope"}), 401
    )
    check(create, client.post("/v1/transactions", json=body, headers=viewer), 403)
    wrong = {"transaction_ref": "TXN-OA-3", "amount": 0, "currency": "usd", "colour": "red"}
    refused = check(create, client.post("/v1/transactions", json=wrong, headers=operator), 422)
    assert set(refused.json["error"]["fields"]) == {"amount", "colour"}
    for status, response in bad_requests(client, "/v1/transactions", operator):
        check(create, response, status)
    check.assert_covered(create)

    listing = "api_list_transactions"
    page = check(
        listing,
        client.get("/v1/transactions?limit=1&currency=usd&sort=amount&order=asc", headers=viewer),
        200,
    )
    check.valid_request(listing, page)
    assert page.json["has_more"] is True
    after = page.json["next_cursor"]
    check(
        listing,
        client.get(
            f"/v1/transactions?limit=1&currency=usd&sort=amount&order=asc&after={after}", headers=viewer
        ),
        200,
    )
    check(listing, client.get("/v1/transactions?limit=0&colour=red", headers=viewer), 422)
    check(listing, client.get("/v1/transactions"), 401)
    check.assert_covered(listing)

    one = "api_get_transaction"
    found = check(one, client.get("/v1/transactions/TXN-OA-1", headers=viewer), 200)
    assert found.json["recovery_attempts"] == []
    others = make_transaction(make_org(), transaction_ref="TXN-OTHER")
    check(one, client.get(f"/v1/transactions/{others.transaction_ref}", headers=viewer), 404)
    check(one, client.get("/v1/transactions/TXN-OA-1"), 401)
    check.assert_covered(one)


def test_close_and_reopen_answers_match_the_document(
    client: FlaskClient,
    check: Checker,
    tokens: dict[str, dict[str, str]],
    org: Organization,
    make_org: Any,
    make_transaction: Any,
) -> None:
    operator, viewer = tokens["operator"], tokens["viewer"]
    transaction = make_transaction(org)
    close, reopen = "api_close_transaction", "api_reopen_transaction"
    url = f"/v1/transactions/{transaction.transaction_ref}"
    body = {"reason": "Paid by bank transfer"}
    closed = check(close, client.post(f"{url}/close", json=body, headers=operator), 200)
    check.valid_request(close, closed, body)
    assert closed.json["closed_reason"] == "Paid by bank transfer"
    check(close, client.post(f"{url}/close", json=body, headers=operator), 409)
    bare = make_transaction(org)  # the body may be left out
    check.valid_request(
        close,
        check(close, client.post(f"/v1/transactions/{bare.transaction_ref}/close", headers=operator), 200),
    )
    check(close, client.post(f"{url}/close", json={"colour": "red"}, headers=operator), 422)
    others = make_transaction(make_org())
    check(close, client.post(f"/v1/transactions/{others.transaction_ref}/close", headers=operator), 404)
    check(close, client.post(f"{url}/close", json=body), 401)
    check(close, client.post(f"{url}/close", json=body, headers=viewer), 403)
    for status, response in bad_requests(client, f"{url}/close", operator):
        if status != 413:
            check(close, response, status)
    # close_transaction reads the body (request.get_data) before json_object sets its 64 KiB cap,
    # so an oversized body is read whole and refused as not an object (400), never 413.
    check.assert_covered(close, not_driven={"413": "the body is read before the cap applies"})

    check(reopen, client.post(f"{url}/reopen", headers=viewer), 403)
    check(reopen, client.post(f"{url}/reopen"), 401)
    assert check(reopen, client.post(f"{url}/reopen", headers=operator), 200).json["status"] == "failed"
    check(reopen, client.post(f"{url}/reopen", headers=operator), 409)
    check(reopen, client.post(f"/v1/transactions/{others.transaction_ref}/reopen", headers=operator), 404)
    check.assert_covered(reopen)


# --- real answers: recoveries ---------------------------------------------------------


def test_recovery_answers_match_the_document(
    client: FlaskClient,
    check: Checker,
    tokens: dict[str, dict[str, str]],
    org: Organization,
    make_org: Any,
    make_transaction: Any,
) -> None:
    operator, viewer = tokens["operator"], tokens["viewer"]
    transaction = make_transaction(org, customer_email="ada@example.com", customer_phone=None)
    spare = make_transaction(org)
    start = "recoveries_api_start"
    body = {"transaction_ref": transaction.transaction_ref, "channels": ["email"], "schedule": [1, 3]}
    started = check(start, client.post("/v1/recoveries", json=body, headers=operator), 201)
    check.valid_request(start, started, body)
    recovery_id = started.json["id"]
    check(start, client.post("/v1/recoveries", json=body, headers=operator), 409)
    check(
        start, client.post("/v1/recoveries", json={**body, "transaction_ref": "NOPE"}, headers=operator), 404
    )
    check(
        start,
        client.post(
            "/v1/recoveries",
            json={"transaction_ref": spare.transaction_ref, "channels": ["fax"]},
            headers=operator,
        ),
        422,
    )
    check(start, client.post("/v1/recoveries", json=body), 401)
    check(start, client.post("/v1/recoveries", json=body, headers=viewer), 403)
    for status, response in bad_requests(client, "/v1/recoveries", operator):
        check(start, response, status)
    check.assert_covered(start)

    get = "recoveries_api_get"
    check(get, client.get(f"/v1/recoveries/{recovery_id}", headers=viewer), 200)
    other = make_transaction(make_org())
    check(get, client.get(f"/v1/recoveries/{recovery_id + 1000}", headers=viewer), 404)
    check(get, client.get(f"/v1/recoveries/{recovery_id}"), 401)
    check.assert_covered(get)
    assert other.transaction_ref not in client.get(f"/v1/recoveries/{recovery_id}", headers=viewer).get_data(
        as_text=True
    )

    cancel = "recoveries_api_cancel"
    url = f"/v1/recoveries/{recovery_id}/cancel"
    check(cancel, client.post(url, headers=viewer), 403)
    check(cancel, client.post(url), 401)
    cancelled = check(cancel, client.post(url, headers=operator), 200)
    assert cancelled.json["status"] == "cancelled"
    check(cancel, client.post(url, headers=operator), 409)
    check(cancel, client.post(f"/v1/recoveries/{recovery_id + 1000}/cancel", headers=operator), 404)
    check.assert_covered(cancel)


# --- real answers: payments (the Stripe sandbox) ----------------------------------------

# The Stripe answers the sandbox is asked to give, how many times (stripe-python retries 500
# and 429 twice), and ours for each (recovery/payments/gateway.py).
STRIPE_FAULTS = {402: (1, 402), 400: (1, 422), 401: (1, 500), 500: (3, 502), 429: (3, 503)}


def _stripe_faults(
    client: FlaskClient,
    check: Checker,
    operation_id: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    stripe_sandbox: Any,
) -> None:
    for fault, (times, status) in STRIPE_FAULTS.items():
        stripe_sandbox.fault(status=fault, count=times)
        check(operation_id, client.post(path, json=body, headers=headers), status)


def test_checkout_session_answers_match_the_document(
    app: Flask,
    client: FlaskClient,
    db: Any,
    check: Checker,
    tokens: dict[str, dict[str, str]],
    org: Organization,
    make_org: Any,
    make_transaction: Any,
    stripe_sandbox: Any,
) -> None:
    operator, viewer = tokens["operator"], tokens["viewer"]
    transaction = make_transaction(org, amount=5000, currency="usd")
    create = "payments_api_create_checkout_session"
    path = "/v1/payments/stripe/checkout-sessions"
    body = {
        "transaction_ref": transaction.transaction_ref,
        "amount": 5000,
        "currency": "usd",
        "customer_email": "customer@example.com",
        "metadata": {"order_id": "ORD-123"},
    }
    created = check(create, client.post(path, json=body, headers=operator), 201)
    check.valid_request(create, created, body)
    session_id = created.json["session_id"]
    check(create, client.post(path, json=body, headers={**operator, "Idempotency-Key": "x" * 256}), 400)
    check(create, client.post(path, json={**body, "amount": -1}, headers=operator), 422)
    check(create, client.post(path, json={**body, "transaction_ref": "NOPE"}, headers=operator), 404)
    others = make_transaction(make_org())
    check(create, client.post(path, json={"transaction_ref": others.transaction_ref}, headers=operator), 404)
    check(create, client.post(path, json=body), 401)
    check(create, client.post(path, json=body, headers=viewer), 403)
    for status, response in bad_requests(client, path, operator):
        check(create, response, status)
    fresh = make_transaction(org, customer_email=None)
    _stripe_faults(
        client, check, create, path, {"transaction_ref": fresh.transaction_ref}, operator, stripe_sandbox
    )
    paid = make_transaction(org, status=TransactionStatus.RECOVERED)
    check(create, client.post(path, json={"transaction_ref": paid.transaction_ref}, headers=operator), 409)
    check.assert_covered(create)

    status_op = "payments_api_session_status"
    url = f"/v1/payments/stripe/sessions/{session_id}/status"
    check.valid_request(status_op, check(status_op, client.get(url, headers=viewer), 200))
    check(status_op, client.get("/v1/payments/stripe/sessions/cs_test_nope/status", headers=viewer), 404)
    check(status_op, client.get(url), 401)
    for fault in (400, 401, 500, 429):
        times, status = STRIPE_FAULTS[fault]
        stripe_sandbox.fault(status=fault, count=times)
        check(status_op, client.get(url, headers=viewer), status)
    check.assert_covered(status_op)


@pytest.mark.parametrize("app_config", [{"STRIPE_SECRET_KEY": ""}])
def test_no_stripe_key_answers_503_as_documented(
    client: FlaskClient,
    check: Checker,
    tokens: dict[str, dict[str, str]],
    org: Organization,
    make_transaction: Any,
) -> None:
    transaction = make_transaction(org)
    body = {"transaction_ref": transaction.transaction_ref}
    for operation_id, path in (
        ("payments_api_create_checkout_session", "/v1/payments/stripe/checkout-sessions"),
        ("payments_api_create_payment_link", "/v1/payments/stripe/payment-links"),
    ):
        refused = check(operation_id, client.post(path, json=body, headers=tokens["operator"]), 503)
        assert refused.json["error"]["message"] == "Stripe API key not configured"


def test_payment_link_answers_match_the_document(
    client: FlaskClient,
    check: Checker,
    tokens: dict[str, dict[str, str]],
    org: Organization,
    make_transaction: Any,
    stripe_sandbox: Any,
) -> None:
    operator, viewer = tokens["operator"], tokens["viewer"]
    transaction = make_transaction(org, amount=5000, currency="usd")
    create = "payments_api_create_payment_link"
    path = "/v1/payments/stripe/payment-links"
    body = {"transaction_ref": transaction.transaction_ref, "amount": 5000, "currency": "usd"}
    check.valid_request(create, check(create, client.post(path, json=body, headers=operator), 201), body)
    check(create, client.post(path, json={**body, "colour": "red"}, headers=operator), 422)
    check(create, client.post(path, json={**body, "transaction_ref": "NOPE"}, headers=operator), 404)
    check(create, client.post(path, json=body), 401)
    check(create, client.post(path, json=body, headers=viewer), 403)
    for status, response in bad_requests(client, path, operator):
        check(create, response, status)
    paid = make_transaction(org, status=TransactionStatus.RECOVERED)
    check(create, client.post(path, json={"transaction_ref": paid.transaction_ref}, headers=operator), 409)
    fresh = make_transaction(org)
    _stripe_faults(
        client, check, create, path, {"transaction_ref": fresh.transaction_ref}, operator, stripe_sandbox
    )
    check.assert_covered(create)


# --- real answers: the webhook ------------------------------------------------------------


def test_webhook_answers_match_the_document(
    app: Flask, client: FlaskClient, check: Checker, make_transaction: Any, org: Organization
) -> None:
    operation_id = "receive_stripe_webhook"
    transaction: Transaction = make_transaction(org)
    event = se.event(
        "payment_intent.payment_failed", se.payment_intent(transaction, status="requires_payment_method")
    )
    received = check(operation_id, se.post(client, event), 200)
    assert received.json == {"received": True, "duplicate": False}
    assert check(operation_id, se.post(client, event), 200).json["duplicate"] is True
    check(operation_id, se.post(client, event, secret="whsec_wrong"), 400)
    unsigned = client.post(se.URL, data=se.body(event), content_type="application/json")
    check(operation_id, unsigned, 400)
    app.config["STRIPE_WEBHOOK_MAX_BYTES"] = 100
    check(operation_id, se.post(client, event), 413)
    app.config["STRIPE_WEBHOOK_MAX_BYTES"] = 1_000_000
    app.config["STRIPE_WEBHOOK_SECRET"] = ""
    check(operation_id, se.post(client, event), 503)
    check.assert_covered(operation_id, not_driven={"500": "an unexpected fault inside the receiver"})


# --- the reference page (/api) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("send `Content-Type: application/json`", "send <code>Content-Type: application/json</code>"),
        ("role **operator**", "role <strong>operator</strong>"),
        ("`<script>alert(1)</script>`", "<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>"),
        ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)&gt;"),
    ],
)
def test_reference_text_is_escaped_before_code_and_strong(text: str, html: str) -> None:
    from recovery.api.reference import api_text

    assert str(api_text(text)) == html


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OWNER])
def test_the_reference_page_shows_every_operation_to_staff(
    app: Flask, client: FlaskClient, signed_in: Any, role: Role
) -> None:
    assert client.get("/api").status_code == 302  # staff only, like every dashboard page
    signed_in(role)
    page = client.get("/api")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for methods in document(app)["paths"].values():
        for entry in methods.values():
            assert f'id="{entry["operationId"]}"' in html
    assert "Needs a token with role" not in html  # the badge says it once
    assert ('href="/settings/api-tokens"' in html) is (role == Role.OWNER)


# --- real answers: CSV imports ---------------------------------------------------------


def test_import_answers_match_the_document(
    app: Flask,
    client: FlaskClient,
    check: Checker,
    tokens: dict[str, dict[str, str]],
    make_org: Any,
    make_token: Any,
) -> None:
    operator, viewer = tokens["operator"], tokens["viewer"]
    create = "imports_api_create"
    body = {
        "filename": "payments.csv",
        "csv": "id,Amount,Currency,Status,Customer Email,Customer Phone\r\n"
        "ch_1,50.00,usd,Failed,ann@example.com,+44 7700 900123\r\n"
        "ch_2,5000,usd,Failed,bob@example.com,\r\n"
        "ch_3,9.00,usd,Paid,cy@example.com,\r\n",
        "mapping": {"customer_name": ""},
    }
    created = check(create, client.post("/v1/imports", json=body, headers=operator), 201)
    check.valid_request(create, created, body)
    result = created.json
    assert (result["status"], result["imported_rows"], result["invalid_rows"], result["skipped_rows"]) == (
        "done",
        1,
        1,
        1,
    )
    assert created.headers["Location"].endswith(f"/v1/imports/{result['id']}")
    assert [p["row"] for p in result["problems"]] == [3] and "amount_minor" in result["problems"][0]["reason"]
    assert [w["row"] for w in result["warnings"]] == [2]
    wrong = {**body, "mapping": {"currency": "Coupon"}}
    refused = check(create, client.post("/v1/imports", json=wrong, headers=operator), 422)
    assert refused.json["error"]["fields"] == {"mapping.currency": "The file has no column 'coupon'."}
    check(create, client.post("/v1/imports", json={"csv": ""}, headers=operator), 422)
    check(create, client.post("/v1/imports", json=body), 401)
    check(create, client.post("/v1/imports", json=body, headers=viewer), 403)
    app.config["CSV_MAX_BYTES"] = 1024  # the body's cap follows the file's: bad_requests' 70 kB is over it
    forget_settings(app)  # read from the config once per app: read it again
    for status, response in bad_requests(client, "/v1/imports", operator):
        check(create, response, status)
    check.assert_covered(create)

    get = "imports_api_get"
    read = check(get, client.get(f"/v1/imports/{result['id']}", headers=viewer), 200)
    assert read.json == result
    other = bearer(make_token(org=make_org(), role=Role.VIEWER)[1])
    check(get, client.get(f"/v1/imports/{result['id']}", headers=other), 404)  # another organization's
    check(get, client.get(f"/v1/imports/{result['id']}"), 401)
    check.assert_covered(get)

    recover = "imports_api_start_import_recoveries"
    url = f"/v1/imports/{result['id']}/start-recoveries"
    started = check(recover, client.post(url, headers=operator), 202).json
    assert (started["import_id"], started["transactions"]) == (result["id"], 1)
    assert len(started["bulk_starts"]) == 1
    check(recover, client.post(url, headers=operator), 409)  # nothing waits any more
    check(recover, client.post(f"/v1/imports/{result['id']}0/start-recoveries", headers=operator), 404)
    stranger = bearer(make_token(org=make_org(), role=Role.OPERATOR)[1])
    check(recover, client.post(url, headers=stranger), 404)  # another organization's
    check(recover, client.post(url, headers=viewer), 403)
    check(recover, client.post(url), 401)
    check.assert_covered(recover)


# --- real answers: campaigns -----------------------------------------------------------------


def test_campaign_answers_match_the_document(
    client: FlaskClient,
    check: Checker,
    tokens: dict[str, dict[str, str]],
    org: Organization,
    make_org: Any,
    make_token: Any,
) -> None:
    from recovery.campaigns import builtin
    from recovery.extensions import db

    builtin.install(db.session, org)  # the built-in campaigns, as create-org gives them
    db.session.commit()
    admin, viewer = bearer(make_token(org=org, role=Role.ADMIN)[1]), tokens["viewer"]
    body = {
        "name": "Retry, then remind",
        "steps": [
            {"action": "retry_card", "delay_hours": 24, "after": "failure"},
            {"action": "email", "delay_hours": 1, "after": "previous"},
        ],
        "end": "hold_for_review",
        "link_lifetime_days": 7,
    }
    create = "campaigns_api_create"
    made = check(create, client.post("/v1/campaigns", json=body, headers=admin), 201)
    check.valid_request(create, made, body)
    url = f"/v1/campaigns/{made.json['id']}"
    check(create, client.post("/v1/campaigns", json={**body, "steps": []}, headers=admin), 422)
    check(create, client.post("/v1/campaigns", json=body), 401)
    check(create, client.post("/v1/campaigns", json=body, headers=tokens["operator"]), 403)
    for status, response in bad_requests(client, "/v1/campaigns", admin):
        check(create, response, status)
    check.assert_covered(create)

    index = "campaigns_api_index"
    check(index, client.get("/v1/campaigns?archived=true", headers=viewer), 200)
    check(index, client.get("/v1/campaigns?archived=maybe", headers=viewer), 422)
    check(index, client.get("/v1/campaigns"), 401)
    check.assert_covered(index)

    get = "campaigns_api_get"
    check(get, client.get(url, headers=viewer), 200)
    check(get, client.get(f"{url}0", headers=viewer), 404)
    check(get, client.get(url), 401)
    check.assert_covered(get)

    update = "campaigns_api_update"
    edit = {"link_lifetime_days": 9}
    edited = check(update, client.patch(url, json=edit, headers={**admin, "If-Match": '"1"'}), 200)
    check.valid_request(update, edited, edit)
    check(update, client.patch(url, json={"version": 1, "name": "B"}, headers=admin), 409)
    check(update, client.patch(url, json={"name": "B"}, headers=admin), 428)
    check(update, client.patch(url, json={"version": 2, "end": "never"}, headers=admin), 422)
    check(update, client.patch(f"{url}0", json={"version": 1}, headers=admin), 404)
    check(update, client.patch(url, json=edit), 401)
    check(update, client.patch(url, json=edit, headers=viewer), 403)
    check(update, client.patch(url, data="{not json", headers=admin, content_type="application/json"), 400)
    check(update, client.patch(url, data="x", headers=admin, content_type="text/plain"), 415)
    big = "[" + " " * 70_000 + "]"
    check(update, client.patch(url, data=big, headers=admin, content_type="application/json"), 413)
    check.assert_covered(update)

    archive = "campaigns_api_archive"
    listed = client.get("/v1/campaigns", headers=viewer).json["data"]
    default = next(c for c in listed if c["builtin"] == "default")
    check(archive, client.post(f"/v1/campaigns/{default['id']}/archive", headers=admin), 409)
    check(archive, client.post(f"{url}/archive", headers=admin), 200)
    check(archive, client.post(f"{url}0/archive", headers=admin), 404)
    check(archive, client.post(f"{url}/archive"), 401)
    check(archive, client.post(f"{url}/archive", headers=viewer), 403)
    check.assert_covered(archive)
    other = bearer(make_token(org=make_org(), role=Role.ADMIN)[1])
    assert client.get(url, headers=other).status_code == 404


# --- real answers: rules --------------------------------------------------------------------


def test_rule_answers_match_the_document(
    client: FlaskClient,
    check: Checker,
    tokens: dict[str, dict[str, str]],
    org: Organization,
    make_transaction: Any,
    make_token: Any,
) -> None:
    from recovery.campaigns import builtin
    from recovery.extensions import db

    builtin.install(db.session, org)
    db.session.commit()
    admin, viewer = bearer(make_token(org=org, role=Role.ADMIN)[1]), tokens["viewer"]
    body = {
        "name": "Big orders: review",
        "conditions": [{"type": "amount", "currency": "usd", "min": 100000, "max": None}],
        "action": "hold_for_review",
        "reason": "Staff call first.",
    }
    create = "rules_api_create"
    made = check(create, client.post("/v1/rules", json=body, headers=admin), 201)
    check.valid_request(create, made, body)
    url = f"/v1/rules/{made.json['id']}"
    check(create, client.post("/v1/rules", json={**body, "conditions": [{"type": "x"}]}, headers=admin), 422)
    check(create, client.post("/v1/rules", json={**body, "version": 1}, headers=admin), 409)
    check(create, client.post("/v1/rules", json=body), 401)
    check(create, client.post("/v1/rules", json=body, headers=tokens["operator"]), 403)
    for status, response in bad_requests(client, "/v1/rules", admin):
        check(create, response, status)
    check.assert_covered(create)

    index = "rules_api_index"
    listed = check(index, client.get("/v1/rules", headers=viewer), 200).json
    check(index, client.get("/v1/rules"), 401)
    check.assert_covered(index)

    get = "rules_api_get"
    check(get, client.get(url, headers=viewer), 200)
    check(get, client.get(f"{url}0", headers=viewer), 404)
    check(get, client.get(url), 401)
    check.assert_covered(get)

    update = "rules_api_update"
    edit = {"name": "Big orders: call first"}
    edited = check(update, client.patch(url, json=edit, headers={**admin, "If-Match": '"1"'}), 200)
    check.valid_request(update, edited, edit)
    check(update, client.patch(url, json={"version": 1, "name": "B"}, headers=admin), 409)
    check(update, client.patch(url, json={"name": "B"}, headers=admin), 428)
    check(update, client.patch(url, json={"version": 2, "action": "never"}, headers=admin), 422)
    check(update, client.patch(f"{url}0", json={"version": 1}, headers=admin), 404)
    check(update, client.patch(url, json=edit), 401)
    check(update, client.patch(url, json=edit, headers=viewer), 403)
    check(update, client.patch(url, data="{not json", headers=admin, content_type="application/json"), 400)
    check(update, client.patch(url, data="x", headers=admin, content_type="text/plain"), 415)
    big = "[" + " " * 70_000 + "]"
    check(update, client.patch(url, data=big, headers=admin, content_type="application/json"), 413)
    check.assert_covered(update)

    reorder = "rules_api_reorder"
    ids = [rule["id"] for rule in listed["data"] if not rule["is_default"]]
    order = {"ids": list(reversed(ids)), "version": listed["version"] + 1}
    moved = check(reorder, client.post("/v1/rules/reorder", json=order, headers=admin), 200)
    check.valid_request(reorder, moved, order)
    check(reorder, client.post("/v1/rules/reorder", json=order, headers=admin), 409)
    check(reorder, client.post("/v1/rules/reorder", json={"ids": ids}, headers=admin), 428)
    check(reorder, client.post("/v1/rules/reorder", json={"ids": ids[:1], "version": 99}, headers=admin), 409)
    version = moved.json["version"]
    check(
        reorder,
        client.post("/v1/rules/reorder", json={"ids": ids[:1], "version": version}, headers=admin),
        422,
    )
    check(reorder, client.post("/v1/rules/reorder", json=order), 401)
    check(reorder, client.post("/v1/rules/reorder", json=order, headers=tokens["operator"]), 403)
    for status, response in bad_requests(client, "/v1/rules/reorder", admin):
        check(reorder, response, status)
    check.assert_covered(reorder)

    preview = "rules_api_preview_rules"
    make_transaction(org, failure_code="insufficient_funds", amount=12345)
    check(preview, client.post("/v1/rules/preview", headers=viewer), 200)
    unsaved = {
        "rules": [
            {
                "name": "Dollars",
                "conditions": [{"type": "currency_in", "values": ["usd"]}],
                "action": "hold_for_review",
            }
        ]
    }
    tried = check(preview, client.post("/v1/rules/preview", json=unsaved, headers=viewer), 200)
    check.valid_request(preview, tried, unsaved)
    bad = {"rules": [{"name": "x", "conditions": [{"type": "country_in", "values": ["QQ"]}]}]}
    check(preview, client.post("/v1/rules/preview", json=bad, headers=viewer), 422)
    check(preview, client.post("/v1/rules/preview"), 401)
    for status, response in bad_requests(client, "/v1/rules/preview", viewer):
        check(preview, response, status)
    check.assert_covered(preview)

    explain = "rules_api_explain_transaction"
    ref = make_transaction(org, failure_code="expired_card").transaction_ref
    asked = check(
        explain, client.post("/v1/rules/explain", json={"transaction_ref": ref}, headers=viewer), 200
    )
    check.valid_request(explain, asked, {"transaction_ref": ref})
    check(explain, client.post("/v1/rules/explain", json={"transaction_ref": "NOPE"}, headers=viewer), 404)
    check(explain, client.post("/v1/rules/explain", json={}, headers=viewer), 422)
    check(explain, client.post("/v1/rules/explain", json={"transaction_ref": ref}), 401)
    for status, response in bad_requests(client, "/v1/rules/explain", viewer):
        check(explain, response, status)
    check.assert_covered(explain)

    delete = "rules_api_delete"
    default = listed["data"][-1]
    check(delete, client.delete(url, headers=admin), 428)
    check(delete, client.delete(url, headers={**admin, "If-Match": '"1"'}), 409)
    check(delete, client.delete(f"/v1/rules/{default['id']}", headers={**admin, "If-Match": '"1"'}), 409)
    check(delete, client.delete(url, headers={**admin, "If-Match": '"2"'}), 204)
    check(delete, client.delete(url, headers={**admin, "If-Match": '"2"'}), 404)
    check(delete, client.delete(url), 401)
    check(delete, client.delete(url, headers=tokens["operator"]), 403)
    check.assert_covered(delete)
