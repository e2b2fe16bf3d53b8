"""The API's OpenAPI 3.1 document, built from the code, and `GET /v1/openapi.json` that serves it.

Each `/v1` view declares itself with `@documented(...)`: a summary, the
TypedDicts of its JSON body and answer, and the refusals only it can give.
Everything else comes from what the app really does, so the document cannot
drift from it: the paths and their parameters from Flask's URL map, bearer
authentication from `install_token_auth`, the role from `require_token_role`,
the body's 400/413/415/422 from declaring a body at all. The serializers are
typed with the same TypedDicts (mypy checks them), and tests/api/test_openapi.py
fails on a `/v1` URL without a declaration and checks real answers against
the document.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, TypeVar

from flask import Blueprint, Flask, current_app, jsonify
from pydantic import ConfigDict, Field, TypeAdapter, with_config
from pydantic.json_schema import JsonSchemaMode
from typing_extensions import TypedDict
from werkzeug.routing import Rule
from werkzeug.wrappers import Response

from recovery.models import Role

F = TypeVar("F", bound=Callable[..., Any])

API_PREFIX = "/v1"
DOCUMENT_PATH = "/v1/openapi.json"
REF_TEMPLATE = "#/components/schemas/{model}"
# Each answer is one of these, in this order on the reference page.
TAGS = (
    ("Transactions", "Failed payments: record them, list them, read one with its recoveries."),
    ("Recoveries", "Campaigns that message a customer with a link to pay, until they pay or it ends."),
    ("Campaigns", "Plans of messages, card retries and staff alerts that a recovery follows, in versions."),
    ("Rules", "Which campaign each failure gets: ordered rules, previewed before they run."),
    ("Imports", "A CSV file of failed payments (our template or a Stripe export), with its column mapping."),
    ("Payments", "Stripe Checkout Sessions and Payment Links for a transaction (fixed shapes)."),
    ("Webhooks", "Stripe's signed events; Stripe calls this, not your program."),
    ("Reference", "This document."),
)

# Closed: a client can rely on every field being listed; an undocumented one fails the tests.
CLOSED = ConfigDict(extra="forbid")


def enum_of(values: tuple[str, ...], description: str) -> Any:
    """A string field limited to the model's own list of values (so a new status shows up here)."""
    return Field(description=description, json_schema_extra={"enum": list(values)})


# Times are ISO 8601 in UTC ending in Z (recovery.api.serializers.iso).
Timestamp = Annotated[
    str, Field(json_schema_extra={"format": "date-time", "examples": ["2025-01-19T10:00:00Z"]})
]


@with_config(CLOSED)
class ErrorDetail(TypedDict):
    type: Annotated[str, Field(description="A stable code to branch on, e.g. `validation_error`.")]
    message: Annotated[str, Field(description="A sentence for people, saying what is wrong.")]
    fields: NotRequired[
        Annotated[
            dict[str, str],
            Field(description="Only on validation errors: each input's name and what is wrong with it."),
        ]
    ]


@with_config(CLOSED)
class ErrorBody(TypedDict):
    """Every refusal: `{"error": {"type", "message", "fields"?}}` with a fitting status."""

    error: ErrorDetail


# What each refusal looks like on the reference page (the type is what the code sends).
ERROR_EXAMPLES: dict[int, ErrorDetail] = {
    400: {
        "type": "invalid_json",
        "message": "The body is not valid JSON: Expecting value (line 1, column 1).",
    },
    401: {
        "type": "unauthorized",
        "message": "This API needs a token: send the header `Authorization: Bearer <token>`.",
    },
    403: {
        "type": "forbidden",
        "message": "This API token's role (viewer) cannot do this; it needs operator or above.",
    },
    404: {"type": "not_found", "message": "Transaction not found"},
    409: {"type": "conflict", "message": "A transaction with transaction_ref 'TXN-001' already exists."},
    413: {
        "type": "request_entity_too_large",
        "message": "The data value transmitted exceeds the capacity limit.",
    },
    415: {
        "type": "unsupported_media_type",
        "message": "Send the body as JSON with the header `Content-Type: application/json`.",
    },
    422: {
        "type": "validation_error",
        "message": "Some fields are not valid: amount.",
        "fields": {"amount": "Amount must be greater than zero."},
    },
    502: {"type": "stripe_api_error", "message": "Stripe is not answering; try again in a minute."},
    503: {"type": "stripe_not_configured", "message": "Stripe API key not configured"},
}

# Added to every operation that reads a JSON body (recovery.api.bodies.json_object).
BODY_ERRORS = {
    400: "The body is empty, not valid JSON, or not a JSON object.",
    413: "The body is over 64 KiB.",
    415: "The body is not sent with `Content-Type: application/json`.",
    422: "A field is unknown or breaks the rules; `fields` names each.",
}

Auth = Literal["bearer", "stripe-signature", "none"]


@dataclass(frozen=True)
class Operation:
    """What a view says about itself; the rest of its entry is read from the app."""

    summary: str
    tag: str
    description: str = ""
    request: type | None = None
    response: type | None = None
    status: int = 200
    query: type | None = None
    path_params: Mapping[str, str] = field(default_factory=dict)
    errors: Mapping[int, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    # False for a body that may be left out (the request is then taken as `{}`).
    request_required: bool = True
    request_example: Mapping[str, Any] | None = None
    response_example: Mapping[str, Any] | None = None
    # Only for the operations Flask does not route (the webhook receiver); views get it from their blueprint.
    auth: Auth | None = None


def documented(**declaration: Any) -> Callable[[F], F]:
    """Declare a `/v1` view's entry in the OpenAPI document (see `Operation`)."""
    operation = Operation(**declaration)

    def decorator(view: F) -> F:
        view.openapi_operation = operation  # type: ignore[attr-defined]
        return view

    return decorator


def operation_of(view: Callable[..., Any]) -> Operation | None:
    found: Operation | None = getattr(view, "openapi_operation", None)
    return found


def is_api_rule(rule: Rule) -> bool:
    return rule.rule == API_PREFIX or rule.rule.startswith(API_PREFIX + "/")


_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")


def openapi_path(rule: Rule) -> str:
    """`/v1/recoveries/<int:attempt_id>` → `/v1/recoveries/{attempt_id}`."""
    return _ARGUMENT.sub(lambda m: "{" + m.group("name") + "}", rule.rule)


def _path_parameters(rule: Rule, described: Mapping[str, str]) -> list[dict[str, Any]]:
    parameters = []
    for match in _ARGUMENT.finditer(rule.rule):
        name = match.group("name")
        if match.group("converter") == "int":
            # recovery.security.DatabaseId: what a BIGINT id can be; anything else is a 404.
            schema: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
        else:
            schema = {"type": "string", "pattern": "^[^/]+$"}
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": described.get(name, ""),
                "schema": schema,
            }
        )
    return parameters


def _uses_bearer(app: Flask, endpoint: str) -> bool:
    from recovery.security import TOKEN_AUTH_BLUEPRINTS

    names = endpoint.split(".")[:-1]
    return any(
        app.blueprints.get(".".join(names[: i + 1])) in TOKEN_AUTH_BLUEPRINTS for i in range(len(names))
    )


class _Schemas:
    """Collects the TypedDicts the operations name, for one pass of pydantic's schema generator."""

    def __init__(self) -> None:
        self.types: dict[type, JsonSchemaMode] = {}

    def ref(self, typed: type, mode: JsonSchemaMode) -> dict[str, str]:
        self.types.setdefault(typed, mode)
        return {"$ref": REF_TEMPLATE.format(model=typed.__name__)}

    def components(self) -> dict[str, Any]:
        inputs: list[tuple[type, JsonSchemaMode, TypeAdapter[Any]]] = [
            (t, mode, TypeAdapter(t)) for t, mode in self.types.items()
        ]
        _refs, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF_TEMPLATE)
        schemas: dict[str, Any] = definitions.get("$defs", {})
        for schema in schemas.values():
            for prop in schema.get("properties", {}).values():
                prop.pop("title", None)  # "Transaction Ref" for transaction_ref says nothing
        return dict(sorted(schemas.items()))


def _query_parameters(query: type) -> list[dict[str, Any]]:
    schema = TypeAdapter(query).json_schema(ref_template=REF_TEMPLATE)
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        prop.pop("title", None)
        description = prop.pop("description", "")
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "description": description,
                "schema": prop,
            }
        )
    return parameters


def _error(status: int, when: str) -> dict[str, Any]:
    return {
        "description": when,
        "content": {
            "application/json": {
                "schema": {"$ref": REF_TEMPLATE.format(model="ErrorBody")},
                "example": {"error": ERROR_EXAMPLES.get(status, {"type": "error", "message": when})},
            }
        },
    }


def _operation_entry(
    operation: Operation,
    operation_id: str,
    auth: Auth,
    role: Role | None,
    path_parameters: list[dict[str, Any]],
    schemas: _Schemas,
) -> dict[str, Any]:
    """The OpenAPI operation object of one endpoint.

    Long because it follows the operation object's fields in the specification's
    order (parameters, body, answers, security), so each can be checked against it.
    """
    entry: dict[str, Any] = {
        "operationId": operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
    }
    description = operation.description
    if role is not None:
        entry["x-required-role"] = role.value
        description = f"Needs a token with role **{role.value}** or above. {description}".strip()
    if description:
        entry["description"] = description
    parameters = list(path_parameters)
    if operation.query is not None:
        parameters += _query_parameters(operation.query)
    if auth == "stripe-signature":
        parameters.append(
            {
                "name": "Stripe-Signature",
                "in": "header",
                "required": True,
                "description": "Stripe's signature of the body with the endpoint's secret.",
                "schema": {"type": "string"},
            }
        )
    if parameters:
        entry["parameters"] = parameters
    entry["security"] = [{"bearerAuth": []}] if auth == "bearer" else []
    errors: dict[int, str] = {}
    if operation.request is not None:
        body: dict[str, Any] = {"schema": schemas.ref(operation.request, "validation")}
        if operation.request_example is not None:
            body["example"] = dict(operation.request_example)
        entry["requestBody"] = {"required": operation.request_required, "content": {"application/json": body}}
        if auth != "stripe-signature":  # read by recovery.api.bodies.json_object
            errors.update(BODY_ERRORS)
    if auth == "bearer":
        errors[401] = "No token, a malformed `Authorization` header, or an unknown, revoked or expired token."
    if role is not None and role != Role.VIEWER:
        errors[403] = f"The token's role is below {role.value}."
    errors.update(operation.errors)
    success: dict[str, Any] = {"description": operation.summary}
    if operation.response is not None:
        content: dict[str, Any] = {"schema": schemas.ref(operation.response, "serialization")}
        if operation.response_example is not None:
            content["example"] = dict(operation.response_example)
        success["content"] = {"application/json": content}
    if operation.headers:
        success["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in operation.headers.items()
        }
    responses: dict[str, Any] = {str(operation.status): success}
    for status in sorted(errors):
        responses[str(status)] = _error(status, errors[status])
    entry["responses"] = responses
    return entry


_UNROUTED = "recovery_openapi_unrouted"


def document_unrouted(app: Flask, path: str, method: str, operation_id: str, operation: Operation) -> None:
    """Declare an operation answered below Flask (absent from its URL map), as the webhook receiver is."""
    app.extensions.setdefault(_UNROUTED, []).append((path, method, operation_id, operation))


def _unrouted_operations(app: Flask) -> list[tuple[str, str, str, Operation]]:
    return list(app.extensions.get(_UNROUTED, ()))


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every documented `/v1` operation of `app`."""
    schemas = _Schemas()
    schemas.ref(ErrorBody, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not is_api_rule(rule):
            continue
        view = app.view_functions[rule.endpoint]
        operation = operation_of(view)
        if operation is None:
            continue  # tests/api/test_openapi.py fails on it
        auth: Auth = "bearer" if _uses_bearer(app, rule.endpoint) else "none"
        role: Role | None = getattr(view, "required_token_role", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(openapi_path(rule), {})[method.lower()] = _operation_entry(
                operation,
                rule.endpoint.replace(".", "_"),
                auth,
                role,
                _path_parameters(rule, operation.path_params),
                schemas,
            )
    for path, method, operation_id, operation in _unrouted_operations(app):
        paths.setdefault(path, {})[method] = _operation_entry(
            operation, operation_id, operation.auth or "none", None, [], schemas
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Recovery API",
            "version": "1",
            "description": (
                "Send failed card payments to Recovery, start and stop recoveries, and create Stripe "
                "payment pages, with an API token of one organization. Amounts are integers in the "
                "currency's minor unit (5000 usd is $50.00); currencies are lower-case ISO 4217 codes; "
                "times are ISO 8601 in UTC. Every refusal is JSON: "
                '`{"error": {"type", "message", "fields"?}}`.'
            ),
        },
        "servers": [{"url": app.config["BASE_URL"].rstrip("/") or "/"}],
        "tags": [{"name": name, "description": text} for name, text in TAGS],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas.components(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "An API token of one organization (`rcv_...`). Owners and admins create them "
                        "under Settings → API tokens; the token's role decides what it may do."
                    ),
                }
            },
        },
    }


def document(app: Flask) -> dict[str, Any]:
    """The app's document, built once: its routes and declarations do not change while it runs."""
    built: dict[str, Any] | None = app.extensions.get("openapi_document")
    if built is None:
        built = app.extensions["openapi_document"] = build_document(app)
    return built


class OpenApiDocument(TypedDict):
    """An OpenAPI 3.1 document (this one)."""

    openapi: Literal["3.1.0"]
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


bp = Blueprint("openapi", __name__, url_prefix=API_PREFIX)


@bp.get("/openapi.json")
@documented(
    summary="This API's OpenAPI 3.1 document",
    tag="Reference",
    response=OpenApiDocument,
    description=(
        "Public: it describes the endpoints and holds no organization's data, so tools can read it "
        "without a token."
    ),
)
def openapi_json() -> Response:
    response = jsonify(document(current_app))
    # The same for everyone and fixed while the app runs; security's default is no-store.
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
