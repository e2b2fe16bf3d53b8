"""The one family of refusals: a service says no, with a reason a person can act on.

Every service refusal subclasses `Refused`. It carries the message (written for
the merchant's staff or the API client), the input at fault if there is one,
and the HTTP status an endpoint answers with. Services raise it and know
nothing of HTTP beyond that number; the app translates it in two places only:
`recovery.errors` for pages (flash and back) and `recovery.api.errors` for the
JSON API (today's error shape).
"""

from __future__ import annotations

# The API's error type for the statuses that have one regardless of the refusal.
_TYPE_BY_STATUS = {404: "not_found", 409: "conflict", 502: "stripe_api_error"}


class Refused(Exception):
    """The request cannot be honoured as asked; `message` says why and what to do instead."""

    status: int = 422
    # The API's error type for a refusal whose status has none of its own (400, 422).
    kind: str = "validation_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status: int | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status
        self._kind = kind

    @property
    def api_type(self) -> str:
        return self._kind or _TYPE_BY_STATUS.get(self.status, self.kind)

    @property
    def fields(self) -> dict[str, str] | None:
        """Input name → message, for the API's `fields`."""
        return {self.field: self.message} if self.field else None

    def __str__(self) -> str:
        return self.message
