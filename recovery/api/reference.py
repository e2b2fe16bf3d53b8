"""`/api`: the JSON API's reference page, rendered from the same OpenAPI document as `/v1/openapi.json`.

Any signed-in staff member may read it: it holds nothing the public document
does not. It is plain HTML from the server (no script), so it works under the
strict CSP and without the internet.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, current_app, render_template
from markupsafe import Markup, escape

from recovery.api import openapi

bp = Blueprint("api_reference", __name__)

_CODE = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
# The role is on the page as a badge; the document says it in the description too.
_ROLE_SENTENCE = re.compile(r"^Needs a token with role \*\*\w+\*\* or above\. ?")


@bp.app_template_filter("api_text")
def api_text(text: str) -> Markup:
    """The document's descriptions (CommonMark's `code` and **strong** only), escaped first."""
    html = str(escape(text))
    html = _CODE.sub(r"<code>\1</code>", html)
    return Markup(_STRONG.sub(r"<strong>\1</strong>", html))


# Stand-ins for the example of a field that declares none.
_FORMAT_EXAMPLES = {"date-time": "2025-01-19T10:00:00Z"}
_TYPE_EXAMPLES: dict[str, Any] = {"string": "string", "integer": 0, "number": 0, "boolean": True}


@dataclass(frozen=True)
class Row:
    """One field or parameter: its name, what it holds, whether it is needed, and what it means."""

    name: str
    type: str
    required: bool
    description: str
    where: str = ""


@dataclass(frozen=True)
class Answer:
    status: str
    description: str
    type: str = ""
    message: str = ""


@dataclass
class Endpoint:
    id: str
    method: str
    path: str
    summary: str
    description: str
    auth: str
    parameters: list[Row] = field(default_factory=list)
    body_schema: str = ""
    body_fields: list[Row] = field(default_factory=list)
    body_example: str | None = None
    success: Answer | None = None
    success_schema: str = ""
    success_example: str | None = None
    errors: list[Answer] = field(default_factory=list)


@dataclass
class Section:
    name: str
    description: str
    endpoints: list[Endpoint] = field(default_factory=list)


@dataclass(frozen=True)
class ObjectDoc:
    name: str
    description: str
    fields: list[Row]


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def type_label(schema: dict[str, Any]) -> str:
    """A reader's name for a schema: `string`, `integer or null`, `list of Recovery`, `one of: a, b`."""
    name = _ref_name(schema)
    if name:
        return name
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of: " + ", ".join(str(v) for v in schema["enum"])
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            labels = [type_label(s) for s in schema[combinator]]
            return " or ".join(dict.fromkeys(labels))
    kind = schema.get("type")
    if kind == "array":
        return "list of " + type_label(schema.get("items", {}))
    if kind == "object":
        values = schema.get("additionalProperties")
        if isinstance(values, dict) and values:
            return "object of " + type_label(values)
        return "object"
    if kind == "null":
        return "null"
    if schema.get("format") == "date-time":
        return "time (ISO 8601, UTC)"
    return str(kind or "any")


def example_of(schema: dict[str, Any], schemas: dict[str, Any], depth: int = 0) -> Any:
    """A value that fits `schema`: its declared example, else one made from its type."""
    if depth > 6:
        return None
    name = _ref_name(schema)
    if name:
        return example_of(schemas[name], schemas, depth + 1)
    if "examples" in schema:
        return schema["examples"][0]
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        if {"type": "null"} in schema["anyOf"]:
            return None  # an optional value with no example of its own: often absent
        return example_of(schema["anyOf"][0], schemas, depth + 1)
    kind = schema.get("type")
    if kind == "object":
        return {
            key: example_of(prop, schemas, depth + 1)
            for key, prop in schema.get("properties", {}).items()
            if key in schema.get("required", ())
        }
    if kind == "array":
        item = example_of(schema.get("items", {}), schemas, depth + 1)
        return [] if item is None or depth > 1 else [item]
    if kind == "integer" and "exclusiveMinimum" in schema:
        return int(schema["exclusiveMinimum"]) + 1
    if schema.get("format") in _FORMAT_EXAMPLES:
        return _FORMAT_EXAMPLES[schema["format"]]
    return _TYPE_EXAMPLES.get(str(kind))


def _fields(schema: dict[str, Any]) -> list[Row]:
    required = set(schema.get("required", ()))
    return [
        Row(name, type_label(prop), name in required, prop.get("description", ""))
        for name, prop in schema.get("properties", {}).items()
    ]


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _auth(entry: dict[str, Any]) -> str:
    if entry.get("security"):
        role = entry.get("x-required-role", "viewer")
        return f"API token, role {role} or above"
    if any(p["name"] == "Stripe-Signature" for p in entry.get("parameters", ())):
        return "Signed by Stripe; no API token"
    return "Public; no token"


def _endpoint(path: str, method: str, entry: dict[str, Any], schemas: dict[str, Any]) -> Endpoint:
    endpoint = Endpoint(
        id=entry["operationId"],
        method=method.upper(),
        path=path,
        summary=entry["summary"],
        description=_ROLE_SENTENCE.sub("", entry.get("description", "")),
        auth=_auth(entry),
        parameters=[
            Row(p["name"], type_label(p["schema"]), p["required"], p.get("description", ""), p["in"])
            for p in entry.get("parameters", ())
        ],
    )
    body = entry.get("requestBody", {}).get("content", {}).get("application/json")
    if body:
        name = _ref_name(body["schema"]) or ""
        endpoint.body_schema = name
        endpoint.body_fields = _fields(schemas.get(name, body["schema"]))
        endpoint.body_example = _pretty(body.get("example", example_of(body["schema"], schemas)))
    for status, answer in entry["responses"].items():
        content = answer.get("content", {}).get("application/json", {})
        if status.startswith("2"):
            endpoint.success = Answer(status, answer["description"])
            if content:
                endpoint.success_schema = _ref_name(content["schema"]) or ""
                if endpoint.success_schema != "OpenApiDocument":
                    example = content.get("example", example_of(content["schema"], schemas))
                    endpoint.success_example = _pretty(example)
        else:
            error = content.get("example", {}).get("error", {})
            endpoint.errors.append(
                Answer(status, answer["description"], error.get("type", ""), error.get("message", ""))
            )
    return endpoint


def reference_from(document: dict[str, Any]) -> tuple[list[Section], list[ObjectDoc]]:
    """The page's sections (one per tag, in the document's order) and the objects the answers hold."""
    schemas: dict[str, Any] = document["components"]["schemas"]
    sections = {tag["name"]: Section(tag["name"], tag.get("description", "")) for tag in document["tags"]}
    for path, methods in document["paths"].items():
        for method, entry in methods.items():
            tag = entry["tags"][0]
            sections.setdefault(tag, Section(tag, "")).endpoints.append(
                _endpoint(path, method, entry, schemas)
            )
    objects = [
        ObjectDoc(name, schema.get("description", ""), _fields(schema))
        for name, schema in schemas.items()
        if schema.get("type") == "object" and name != "OpenApiDocument"
    ]
    return [s for s in sections.values() if s.endpoints], objects


@bp.get("/api")
def index() -> str:
    """The reference for staff who hold (or will create) API tokens."""
    document = openapi.document(current_app)
    sections, objects = reference_from(document)
    return render_template("api/reference.html", document=document, sections=sections, objects=objects)
