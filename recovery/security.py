"""Headers, host checks, login-by-default and role checks for every view."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, current_app, redirect, request, url_for
from flask_login import current_user
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter
from werkzeug.wrappers import Response

from recovery.config import settings
from recovery.models import Role

FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})

# Endpoints anyone may reach with no credentials at all. Everything else needs
# a signed-in user, or a Bearer token on the API's blueprints.
PUBLIC_ENDPOINTS = frozenset(
    {
        "auth.login",
        # Forgotten passwords and invitations: the signed link is the credential.
        "auth.forgot_password",
        "auth.reset_password",
        "users.accept_invite",
        # The development outbox of staff emails checks who may read it itself.
        "staffmail.outbox",
        "staffmail.detail",
        "health.healthz",
        # The API's OpenAPI document: endpoints and shapes, no organization's data.
        "openapi.openapi_json",
        "static",
        "customer.success",
        "customer.cancel",
        # The customer's link from an email or SMS: the token is the credential.
        "customer.pay",
        "customer.checkout",
        # The email's List-Unsubscribe target: one-click, no cookie (RFC 8058).
        "customer.unsubscribe_confirm",
        "customer.unsubscribe",
        # Twilio authenticates by signing the request (recovery/recoveries/twilio_hooks.py).
        "twilio.status",
        "twilio.inbound",
    }
)

# Blueprints authenticated by API token instead of session (filled by
# recovery.api.auth.install_token_auth); the login check leaves them alone.
TOKEN_AUTH_BLUEPRINTS: set[Blueprint] = set()

CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

F = TypeVar("F", bound=Callable[..., Any])


def is_safe_next(target: str | None) -> bool:
    """Allow only a path inside this app: no scheme, no host, no backslash tricks."""
    if not target or not target.startswith("/"):
        return False
    if target.startswith("//") or "\\" in target or any(ord(c) < 32 for c in target):
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


def require_role(role: Role | str) -> Callable[[F], F]:
    """Refuse (403) a signed-in user whose role is below `role`.

    The view is marked with its role (`required_role`): tests/test_route_roles.py
    walks every route and fails on a staff POST that declares none.
    """
    needed = Role(role)

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                return current_app.login_manager.unauthorized()  # type: ignore[attr-defined]
            if not current_user.has_role(needed):
                abort(403)
            return view(*args, **kwargs)

        wrapped.required_role = needed  # type: ignore[attr-defined]
        return wrapped  # type: ignore[return-value]

    return decorator


def required_role(view: Callable[..., Any]) -> Role | None:
    """The role `view` declared with `require_role`, if any."""
    return getattr(view, "required_role", None)


class DatabaseId(IntegerConverter):
    """`<int:…>` in every route: an id past BIGINT is no row of ours (404), not a database error (500)."""

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(map, *args, **kwargs)


def init_app(app: Flask) -> None:
    app.url_map.converters["int"] = DatabaseId  # before any blueprint adds its routes
    config = settings(app=app)
    if config.proxy_hops:
        hops = config.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )
    production = config.is_production

    @app.before_request
    def check_host() -> None:
        # Reading request.host validates it against TRUSTED_HOSTS (400 if not allowed).
        if config.trusted_hosts:
            request.host  # noqa: B018

    @app.before_request
    def refuse_nul() -> None:
        # PostgreSQL text cannot hold NUL: a lookup or save with one would be a 500.
        values = [request.path, *request.args.keys(), *request.args.values()]
        if request.method in ("POST", "PUT", "PATCH") and request.mimetype in FORM_TYPES:
            values += [*request.form.keys(), *request.form.values()]
        if any("\x00" in value for value in values):
            abort(400, description="The request contains a NUL character (%00), which no field can hold.")

    @app.before_request
    def require_login() -> Any:
        if request.endpoint is None or request.endpoint in PUBLIC_ENDPOINTS:
            return None
        if uses_token_auth():
            return None  # the blueprint's own before_request demands a token
        if not current_user.is_authenticated:
            return app.login_manager.unauthorized()  # type: ignore[attr-defined]
        return None

    @app.after_request
    def security_headers(response: Response) -> Response:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)
        # A view may allow its own origin to frame it (the outbox's email preview).
        headers.setdefault("X-Frame-Options", "DENY")
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "strict-origin-when-cross-origin"
        if production:
            headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        if request.endpoint != "static":
            headers.setdefault("Cache-Control", "no-store")
        return response


def uses_token_auth() -> bool:
    """Whether the request's view belongs to (or is nested in) a token-auth blueprint."""
    return any(current_app.blueprints.get(name) in TOKEN_AUTH_BLUEPRINTS for name in request.blueprints)


def redirect_next(default_endpoint: str = "transactions.index") -> Response:
    target = request.args.get("next") or request.form.get("next")
    if is_safe_next(target):
        return redirect(target)  # type: ignore[arg-type]
    return redirect(url_for(default_endpoint))
