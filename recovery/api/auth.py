"""Bearer-token authentication and role checks for API blueprints.

An API blueprint calls `install_token_auth(bp)`: every view of it then needs
`Authorization: Bearer <token>` and no session or CSRF token applies to it.
Views read the token with `current_token()` and act as `token_actor()`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import structlog
from flask import Blueprint, g, request

from recovery import security
from recovery.api.errors import ApiError, install_error_handlers
from recovery.audit import Actor
from recovery.extensions import csrf, db
from recovery.models import ApiToken, Role, utcnow
from recovery.tokens import services
from recovery.unit_of_work import commit_now

F = TypeVar("F", bound=Callable[..., Any])

REALM = 'Bearer realm="Recovery API"'


def _unauthorized(message: str, *, invalid_token: bool = False) -> ApiError:
    # RFC 6750: a request without credentials gets the bare challenge; a bad token
    # gets error="invalid_token" so that clients know to stop retrying with it.
    challenge = f'{REALM}, error="invalid_token"' if invalid_token else REALM
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


def bearer_token() -> str:
    """The token of the Authorization header, or a 401 ApiError saying what is wrong with it."""
    header = request.headers.get("Authorization", "").strip()
    if not header:
        raise _unauthorized(
            "This API needs a token: send the header `Authorization: Bearer <token>`. "
            "Owners and admins create tokens under Settings → API tokens."
        )
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or " " in value:
        raise _unauthorized(
            "The Authorization header must be `Bearer <token>` (one space, no quotes).", invalid_token=True
        )
    return value


def authenticate_request() -> None:
    """Find the request's token (before every view of a token-auth blueprint)."""
    now = utcnow()
    try:
        token = services.verify_token(db.session, bearer_token(), now)
    except services.InvalidToken as error:
        raise _unauthorized(str(error), invalid_token=True) from None
    if services.mark_used(token, now):
        # At most once a minute per token; kept even if the request is then refused.
        commit_now(db.session, "a token's last use is recorded even when its request is refused")
    g.api_token = token
    structlog.contextvars.bind_contextvars(api_token_id=token.id, organization_id=token.organization_id)


def install_token_auth(bp: Blueprint) -> None:
    """Authenticate every view of `bp` by Bearer token instead of session and CSRF.

    Call it on each API blueprint, nested ones included: CSRF exemption goes by
    the innermost blueprint.
    """
    security.TOKEN_AUTH_BLUEPRINTS.add(bp)
    csrf.exempt(bp)
    install_error_handlers(bp)
    bp.before_request(authenticate_request)


def current_token() -> ApiToken:
    """The token that authenticated this request."""
    token: ApiToken | None = g.get("api_token")
    if token is None:
        raise RuntimeError("No API token: the view's blueprint must call install_token_auth().")
    return token


def token_actor() -> Actor:
    """The request's token as the actor of audit events, with the client address."""
    return Actor.for_token(current_token(), request.remote_addr)


def require_token_role(role: Role | str) -> Callable[[F], F]:
    """Refuse (403) a request whose token's role is below `role`."""
    needed = Role(role)

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            token = current_token()
            if not token.has_role(needed):
                raise ApiError(
                    403,
                    "forbidden",
                    f"This API token's role ({token.role}) cannot do this; it needs {needed.value} or above.",
                )
            return view(*args, **kwargs)

        wrapped.required_token_role = needed  # type: ignore[attr-defined]  # read by the OpenAPI document
        return wrapped  # type: ignore[return-value]

    return decorator
