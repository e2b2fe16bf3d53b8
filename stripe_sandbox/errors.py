"""Stripe's error envelope: the exceptions the API raises and the JSON they become."""

from __future__ import annotations

from typing import Any


class StripeError(Exception):
    """An error answered as `{"error": {...}}` with the HTTP status Stripe uses for it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.extra = extra

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            error["param"] = self.param
        error.update(self.extra)
        return {"error": error}


def missing(param: str) -> StripeError:
    return StripeError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def unknown(param: str) -> StripeError:
    return StripeError(400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param)


def invalid(param: str, message: str, code: str = "parameter_invalid") -> StripeError:
    """A refused parameter: like Stripe's, it names its code, its param and the code's doc_url."""
    return StripeError(400, message, code=code, param=param)


def no_such(kind: str, object_id: str, param: str = "id") -> StripeError:
    # Stripe answers 404 for an unknown id in the path, 400 for one in the body.
    status = 404 if param == "id" else 400
    return StripeError(status, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)
