"""`create_app()`: the sandbox's Flask app — Stripe's API under /v1, hosted pages, a control API."""

from __future__ import annotations

import base64
import binascii
import logging
import time

from flask import Flask, Response, g, render_template, request
from werkzeug.exceptions import HTTPException

from stripe_sandbox import api, control, demo_cards, off_session, pages, payments
from stripe_sandbox.config import API_VERSION, Config
from stripe_sandbox.context import EXTENSION, Sandbox, current
from stripe_sandbox.errors import StripeError
from stripe_sandbox.faults import Faults
from stripe_sandbox.objects import new_id
from stripe_sandbox.store import Store
from stripe_sandbox.webhooks import Dispatcher

log = logging.getLogger("stripe_sandbox")

NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization header, "
    "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/."
)


def create_app(config: Config | None = None) -> Flask:
    """Build the app over the SQLite file in `config.database`; the caller starts the webhook thread."""
    config = config or Config.from_env()
    app = Flask(__name__)
    store = Store(config.database)
    demo_cards.install(store)  # the failed payments recovery/demo.py names
    faults = Faults()
    for spec in config.faults:
        faults.add(spec)
    dispatcher = Dispatcher(config, store)
    sandbox = Sandbox(config=config, store=store, faults=faults, dispatcher=dispatcher)
    dispatcher.chore = lambda: payments.expire_due_sessions(sandbox)
    app.extensions[EXTENSION] = sandbox

    # off_session adds its PaymentMethod and PaymentIntent endpoints to the API blueprint.
    assert off_session.ROUTES_ON is api.bp
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(control.bp)
    app.before_request(_before)
    app.after_request(_after)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _crash)
    return app


def _is_api() -> bool:
    return request.path == "/v1" or request.path.startswith("/v1/")


def mask(key: str) -> str:
    """Mask a key the way Stripe's error messages do: `sk_test_****...abcd`."""
    prefix = key[: key.index("_", 3) + 1] if key.count("_") >= 2 else ""
    hidden = max(len(key) - len(prefix) - 4, 0)
    return prefix + "*" * hidden + key[len(prefix) + hidden :]


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":  # `curl -u sk_test_...:` works against Stripe too
        try:
            return base64.b64decode(value).decode().partition(":")[0] or None
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def _before() -> Response | None:
    g.request_id = new_id("req_", 14)
    g.started = time.monotonic()
    g.idempotency_key = request.headers.get("Idempotency-Key") or None
    g.replayed = False
    if not _is_api():
        return None
    sandbox = current()
    key = _presented_key()
    if key is None:
        return api.json_response(401, StripeError(401, NO_KEY).body())
    if key != sandbox.config.api_key:
        return api.json_response(401, StripeError(401, f"Invalid API Key provided: {mask(key)}").body())
    g.api_key = key
    fault = sandbox.faults.take()
    if fault is None:
        return None
    if fault.delay_ms:
        time.sleep(fault.delay_ms / 1000)
    if fault.status is None:
        return None
    g.fault = True
    body, headers = fault.response()
    return api.json_response(fault.status, body, headers)


def _after(response: Response) -> Response:
    response.headers["Request-Id"] = g.get("request_id", "")
    if _is_api():
        response.headers["Stripe-Version"] = request.headers.get("Stripe-Version") or API_VERSION
        current().store.log_request(
            g.get("request_id", ""),
            request.method,
            request.path,
            g.get("idempotency_key"),
            response.status_code,
            g.get("replayed", False),
            request.headers.get("Stripe-Version"),
        )
    elapsed = (time.monotonic() - g.get("started", time.monotonic())) * 1000
    notes = "".join(
        [
            f" idempotency_key={g.idempotency_key}" if g.get("idempotency_key") else "",
            " replayed" if g.get("replayed") else "",
            " injected-fault" if g.get("fault") else "",
        ]
    )
    log.info(
        "%s %s %s %d %.1fms%s",
        g.get("request_id"),
        request.method,
        request.path,
        response.status_code,
        elapsed,
        notes,
    )
    return response


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    if _is_api():
        if status in (404, 405):
            message = (
                f"Unrecognized request URL ({request.method}: {request.path}). Please see "
                "https://stripe.com/docs or we can help at https://support.stripe.com/."
            )
        else:
            message = error.description or "Invalid request."
        return api.json_response(status, StripeError(status, message).body())
    html = render_template("message.html", title="Something went wrong", message=error.description)
    return Response(html, status=status, mimetype="text/html")


def _crash(error: Exception) -> Response:
    log.exception("unhandled error")
    if _is_api():
        body = StripeError(500, "An unknown error occurred in the sandbox.", type="api_error").body()
        return api.json_response(500, body)
    html = render_template("message.html", title="Something went wrong", message="The sandbox hit an error.")
    return Response(html, status=500, mimetype="text/html")


__all__ = ["Sandbox", "create_app", "mask"]
