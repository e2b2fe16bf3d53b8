"""Request bodies for the API: a JSON object, or an ApiError saying what is wrong."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from recovery.api.errors import ApiError

# A transaction with the largest metadata (4 KiB) and every field at its limit
# is well under this; anything bigger is a mistake, refused before it is read.
API_MAX_BODY_BYTES = 64 * 1024


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_object(max_bytes: int = API_MAX_BODY_BYTES) -> dict[str, Any]:
    """The request body as a JSON object.

    415 unless the Content-Type is JSON; 400 if the body is not valid JSON or
    not an object; 413 (from werkzeug) if it is larger than `max_bytes`.
    """
    if not request.is_json:
        raise ApiError(
            415,
            "unsupported_media_type",
            "Send the body as JSON with the header `Content-Type: application/json`.",
        )
    request.max_content_length = max_bytes
    data = request.get_data(cache=True)
    if not data.strip():
        raise ApiError(400, "invalid_json", "The request body is empty; send a JSON object.")
    try:
        # NaN and Infinity are not JSON, though Python's parser takes them.
        body = json.loads(data, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise ApiError(
            400,
            "invalid_json",
            f"The body is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno}).",
        ) from None
    except (ValueError, RecursionError) as error:
        # UnicodeDecodeError is a ValueError; RecursionError: absurdly deep nesting.
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {error}.") from None
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "invalid_json",
            f"The body must be a JSON object ({{...}}), not {_json_kind(body)}.",
        )
    if _holds_nul(body):
        # Valid JSON, but PostgreSQL text cannot hold it: a lookup or save would fail.
        raise ApiError(422, "validation_error", "Text in the body must not contain NUL (\\u0000).")
    return body


def _holds_nul(body: Any) -> bool:
    """Whether any key or string holds a NUL, at any depth the parser accepted (a loop, not recursion)."""
    waiting = [body]
    while waiting:
        value = waiting.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            waiting.extend(value.keys())
            waiting.extend(value.values())
        elif isinstance(value, list):
            waiting.extend(value)
    return False


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def expected_version(body: dict[str, Any], *, required: bool = True) -> int | None:
    """The version a write was made from: If-Match ("3", W/"3" or 3), else the body's `version` (removed).

    Missing: None, or 428 when `required`; not a whole number: 422. The
    campaigns and rules APIs answer 409 when it is not the current one.
    """
    header = request.headers.get("If-Match")
    raw: object = body.pop("version", None)
    if header is not None:
        raw = header.strip().removeprefix("W/").strip('"')
    if raw is None:
        if not required:
            return None
        raise ApiError(
            428,
            "precondition_required",
            'Say which version you change: the header If-Match: "<version>" or a version field.',
            {"version": "Required."},
        )
    if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit())):
        raise ApiError(
            422, "validation_error", "The version is a whole number.", {"version": "Not a version."}
        )
    return int(raw)
