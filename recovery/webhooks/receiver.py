"""`POST /v1/payments/stripe/webhooks`: verify, store, enqueue, answer, below Flask.

Stripe's deliveries are the app's busiest requests, and the endpoint's whole
job is four steps. Flask's dispatch around them (request context, session,
URL map, the app's before/after hooks) cost as much as the steps themselves,
so this small WSGI app takes the path before Flask sees it and does the little
the hooks would have done for it: a request id on the log lines and the
answer, the JSON error shape, no caching. Everything else goes on to Flask.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from flask import Flask
from pydantic import Field, with_config
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from typing_extensions import TypedDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from recovery import logs
from recovery.api.openapi import CLOSED, Operation, document_unrouted
from recovery.extensions import db
from recovery.logs import get_logger
from recovery.payments.gateway import STRIPE_API_VERSION
from recovery.payments.webhook_signature import WebhookRejected, is_event_id, verify_webhook
from recovery.webhooks import jobs, receiving

log = get_logger("recovery.webhooks")

PATH = "/v1/payments/stripe/webhooks"
# Stripe posts to the URL as configured in its dashboard, slash or not: neither may redirect.
PATHS = frozenset({PATH, PATH + "/"})

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class StripeEvent(TypedDict):
    """A Stripe event, as Stripe sends it (only the fields we read are listed)."""

    id: str
    type: Annotated[str, Field(examples=["checkout.session.completed"])]
    data: dict[str, Any]


@with_config(CLOSED)
class EventReceived(TypedDict):
    received: bool
    duplicate: Annotated[bool, Field(description="True when this event was received before.")]


# Its entry in the OpenAPI document (recovery.api.openapi), since Flask's URL map does not hold it.
OPERATION = Operation(
    summary="Receive a Stripe event (Stripe calls this)",
    tag="Webhooks",
    auth="stripe-signature",
    request=StripeEvent,
    response=EventReceived,
    description=(
        "Point a Stripe webhook endpoint here. Signed by Stripe (`Stripe-Signature`, the endpoint's "
        "secret in `STRIPE_WEBHOOK_SECRET`); no API token. The event is stored before the answer and "
        "processed by a worker: `checkout.session.completed` completes the recovery, "
        "`payment_intent.succeeded` and `payment_intent.payment_failed` are logged. A repeated event "
        "is answered as a duplicate."
    ),
    errors={
        400: "The signature is missing, wrong or too old, or the body is not a Stripe event.",
        413: "The body is over the size limit.",
        500: "The event could not be taken; Stripe sends it again.",
        503: "No webhook secret is configured, or the event could not be stored; Stripe sends it again.",
    },
)


class StripeWebhookReceiver:
    """WSGI middleware: answers the webhook path itself, passes every other request to `fallback`."""

    def __init__(self, app: Flask, fallback: WSGIApp) -> None:
        self.app = app
        self.fallback = fallback

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") not in PATHS:
            return self.fallback(environ, start_response)
        request = Request(environ)
        request_id = logs.bind_request_id(request.headers.get("X-Request-ID", ""))
        try:
            if request.method != "POST":
                response = _answer(405, "method_not_allowed", "POST a signed Stripe event here")
                response.headers["Allow"] = "POST"
            else:
                response = self.receive_or_500(request)
        finally:
            logs.unbind_request_id()
        response.headers["X-Request-ID"] = request_id
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response(environ, start_response)

    def receive_or_500(self, request: Request) -> Response:
        try:
            with self.app.app_context():
                return self.receive(request)
        except Exception:
            # Flask's error handling is not in front of this path, so say it here. A 5xx makes
            # Stripe send the event again; if it was stored, that is answered as a duplicate.
            log.exception("stripe_webhook_error", client=request.remote_addr)
            return _answer(500, "internal_error", "the event could not be taken; retry later")

    def receive(self, request: Request) -> Response:
        """Verify, store, enqueue, answer: in that order, so a stored event is never lost.

        One straight path on purpose: it is every Stripe delivery's (the app's
        busiest request), and each refusal is answered where it is found, with
        its own log line, rather than through helpers that return answers.
        """
        config = self.app.config
        limit = config["STRIPE_WEBHOOK_MAX_BYTES"]
        # One byte over the limit: a chunked body has no Content-Length to refuse it
        # by, and werkzeug's stream stops quietly at its maximum, which would leave a
        # cut-off body whose signature fails. Reading limit + 1 bytes tells them apart.
        request.max_content_length = limit + 1
        client = request.remote_addr
        payload: bytes | None
        try:
            payload = request.get_data(cache=False)
        except RequestEntityTooLarge:
            payload = None  # a Content-Length over the limit: nothing was read
        if payload is None or len(payload) > limit:
            log.warning("stripe_webhook_too_large", client=client, content_length=request.content_length)
            return _answer(413, "payload_too_large", "body over the size limit")
        try:
            event = verify_webhook(
                payload,
                request.headers.get("Stripe-Signature"),
                _secrets(config["STRIPE_WEBHOOK_SECRET"]),
                config["STRIPE_WEBHOOK_TOLERANCE_SECONDS"],
            )
        except RecursionError:
            # A signed body nested thousands deep: json.loads runs out of stack. Not Stripe's.
            log.warning("stripe_webhook_invalid_body", reason="too_deep", client=client, bytes=len(payload))
            return _answer(400, "invalid_request", "invalid body: nested too deeply")
        except WebhookRejected as rejected:
            if rejected.reason == "not_configured":
                log.error("stripe_webhook_not_configured", client=client)
                return _answer(503, "not_configured", "STRIPE_WEBHOOK_SECRET is not configured")
            name = (
                "stripe_webhook_invalid_body"
                if rejected.reason.startswith("not_")
                else "stripe_webhook_signature_invalid"
            )
            log.warning(name, reason=rejected.reason, client=client, bytes=len(payload))
            return _answer(400, "invalid_request", rejected.message)
        unstorable = receiving.unstorable_field(event)
        if unstorable is not None:
            # Signed, so ours to answer; but no retry will ever store it (PostgreSQL
            # text holds no NUL), so 400 rather than a 503 Stripe would repeat for days.
            log.warning(
                "stripe_webhook_invalid_body", reason="control_characters", field=unstorable, client=client
            )
            return _answer(400, "invalid_request", f"invalid body: {unstorable} holds control characters")
        if not is_event_id(event["id"]):
            # Signed by our secret, so a bug or a forgery rather than Stripe: no retry will fix it.
            log.warning("stripe_webhook_invalid_body", reason="bad_event_id", client=client)
            return _answer(
                400,
                "invalid_request",
                "invalid body: id is not a Stripe event id (evt_, then up to 251 letters, digits, _)",
            )
        version = event.get("api_version")
        if version != STRIPE_API_VERSION:
            # An endpoint made for another version (or an account's events from before the
            # pin) sends objects in that version's shape; the handlers read only fields
            # every recent version has, so the event is taken, and the mismatch is logged.
            log.warning(
                "stripe_webhook_api_version_differs",
                event_id=event["id"],
                type=event["type"],
                api_version=str(version)[:40] if version is not None else None,
                expected=STRIPE_API_VERSION,
            )
        try:
            received = store(event)
        except SQLAlchemyError as error:
            # 5xx: Stripe retries for three days; nothing was stored or enqueued.
            log.error(
                "stripe_webhook_store_failed", event_id=event["id"], type=event["type"], error=str(error)
            )
            return _answer(503, "unavailable", "could not store the event; retry later")
        queued = False
        if received.created:
            try:
                jobs.enqueue_processing(received.stripe_event_id)
                queued = True
            except RedisError as error:
                # Stored is what matters: the sweeper enqueues it once Redis is back.
                log.warning(
                    "stripe_webhook_enqueue_failed", event_id=received.stripe_event_id, error=str(error)
                )
        log.info(
            "stripe_webhook_received",
            event_id=received.stripe_event_id,
            type=received.type,
            duplicate=not received.created,
            queued=queued,
            livemode=bool(event.get("livemode")),
            client=client,
        )
        return _json(200, {"received": True, "duplicate": not received.created})


def store(event: dict[str, Any]) -> receiving.Received:
    """Store the event with one statement that commits itself, on a connection of its own.

    Autocommit spares the BEGIN and COMMIT round trips around the INSERT, and
    the row is still durable before the 200 tells Stripe to stop sending.
    """
    with db.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        return receiving.store_event(connection, event)


def install(app: Flask) -> None:
    """Answer the webhook path below Flask; call before any middleware that must see it too (ProxyFix)."""
    app.wsgi_app = StripeWebhookReceiver(app, app.wsgi_app)  # type: ignore[method-assign]
    document_unrouted(app, PATH, "post", "receive_stripe_webhook", OPERATION)


def _secrets(configured: object) -> list[str]:
    return [s.strip() for s in str(configured).split(",") if s.strip()]


def _answer(status: int, kind: str, message: str) -> Response:
    return _json(status, {"error": {"type": kind, "message": message}})


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
