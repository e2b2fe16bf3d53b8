"""JSON errors for the API: `{"error": {"type", "message", "fields"?}}`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from werkzeug.wrappers import Response


class ApiError(Exception):
    """An API refusal with its HTTP status; `fields` maps input names to messages."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.fields = fields
        self.headers = headers or {}


def error_body(kind: str, message: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}


def api_error_response(error: ApiError) -> Response:
    response = jsonify(error_body(error.type, error.message, error.fields))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def install_error_handlers(bp: Blueprint) -> None:
    """Answer an ApiError raised in `bp`'s views (or its before_request) as JSON."""
    bp.register_error_handler(ApiError, api_error_response)
