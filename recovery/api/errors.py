"""JSON errors for the API: `{"error": {"type", "message", "fields"?}}`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from werkzeug.wrappers import Response

from recovery.extensions import db
from recovery.refusals import Refused


class ApiError(Refused):
    """A refusal made by the API layer itself (a malformed body, an unknown field).

    `fields` maps input names to messages.
    """

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, status=status, kind=type)
        self.type = type
        self._fields = fields
        self.headers = headers or {}

    @property
    def fields(self) -> dict[str, str] | None:
        return self._fields


def error_body(kind: str, message: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}


def api_error_response(error: Refused) -> Response:
    """The JSON answer to a refusal; whatever the view had written is rolled back first."""
    db.session.rollback()
    response = jsonify(error_body(error.api_type, error.message, error.fields))
    response.status_code = error.status
    response.headers.update(getattr(error, "headers", {}))
    return response


def install_error_handlers(bp: Blueprint) -> None:
    """Answer a refusal raised in `bp`'s views (or its before_request) as JSON."""
    bp.register_error_handler(Refused, api_error_response)
