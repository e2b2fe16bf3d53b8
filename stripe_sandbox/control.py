"""`/_sandbox/*`: the control API for tests and demos (no auth: a local development tool)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from werkzeug.wrappers import Response

from stripe_sandbox import demo_cards, payments
from stripe_sandbox.context import current
from stripe_sandbox.faults import FaultSpecError
from stripe_sandbox.webhooks import endpoints

bp = Blueprint("control", __name__, url_prefix="/_sandbox")


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


def _bad(message: str) -> tuple[Response, int]:
    return jsonify(error={"type": "invalid_request_error", "message": message}), 400


@bp.get("/health")
def health() -> Response:
    return jsonify(status="ok")


@bp.route("/faults", methods=["GET", "POST", "DELETE"])
def faults() -> Response | tuple[Response, int]:
    sandbox = current()
    if request.method == "POST":
        try:
            sandbox.faults.add(_body())
        except FaultSpecError as error:
            return _bad(str(error))
    elif request.method == "DELETE":
        sandbox.faults.clear()
    return jsonify(faults=sandbox.faults.pending())


@bp.route("/webhook_endpoints", methods=["GET", "POST"])
def webhook_endpoints() -> Response | tuple[Response, int]:
    sandbox = current()
    if request.method == "POST":
        body = _body()
        url = body.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return _bad("url must be an http(s) URL")
        secret = body.get("secret") or sandbox.config.webhook_secret
        sandbox.store.add_endpoint(url, str(secret))
    urls = [{"url": url} for url, _secret in endpoints(sandbox.config, sandbox.store)]
    return jsonify(webhook_endpoints=urls)


@bp.get("/deliveries")
def deliveries() -> Response:
    return jsonify(deliveries=current().store.deliveries())


@bp.post("/reset")
def reset() -> Response:
    """Forget all objects, keys, runtime endpoints, deliveries, the request log, faults and the clock."""
    sandbox = current()
    sandbox.store.reset()
    sandbox.faults.clear()
    return jsonify(status="reset")


@bp.get("/requests")
def requests() -> Response:
    return jsonify(requests=current().store.requests())


@bp.route("/clock", methods=["GET", "POST"])
def clock() -> Response | tuple[Response, int]:
    sandbox = current()
    if request.method == "POST":
        seconds = _body().get("advance_seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            return _bad("advance_seconds must be a non-negative number")
        sandbox.store.advance_clock(seconds)
        payments.expire_due_sessions(sandbox)
    return jsonify(now=sandbox.store.now(), offset=sandbox.store.clock_offset())


@bp.post("/demo_cards")
def install_demo_cards() -> Response:
    """Create the demo's failed off-session payments again (a reset removes them; a start makes them)."""
    demo_cards.install(current().store)
    return jsonify(payment_intents=[failure[0] for failure in demo_cards.DEMO_FAILURES])
