"""HTML error pages for people, JSON errors for the API and health check."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from flask import Flask, flash, jsonify, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, RequestURITooLarge, SecurityError
from werkzeug.wrappers import Response

from recovery.api.errors import api_error_response
from recovery.extensions import db
from recovery.logs import get_logger, loggable_path
from recovery.refusals import Refused
from recovery.security import is_safe_next

log = get_logger("recovery.errors")

# The longest URL (path and query string, as sent) the app answers. Ours are
# far shorter: a list page with every filter and a cursor is under 500 bytes.
# gunicorn.conf.py lets request lines through up to gunicorn's own maximum
# (8190 bytes), so every longer URL up to there gets this app's 414 (JSON under
# /v1/); only a request line past 8190 bytes gets gunicorn's HTML 414.
URL_MAX_BYTES = 4096


def refuse_long_urls() -> None:
    """Answer 414 for a URL over URL_MAX_BYTES, before sign-in or a token is asked for."""
    environ = request.environ
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw is None:  # a server that keeps no raw URI: the decoded one, never longer
        raw = environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", "")
    if len(raw) > URL_MAX_BYTES:
        raise RequestURITooLarge(
            f"The URL is {len(raw)} bytes long; at most {URL_MAX_BYTES} are accepted. "
            "Send fewer or shorter query parameters."
        )


def wants_json() -> bool:
    return request.path.startswith("/v1/") or request.path in ("/v1", "/healthz")


def back_target() -> str:
    """Where a refused form goes back to: its safe `next`, else the page it came from, else the dashboard."""
    target = request.form.get("next") if request.method == "POST" else None
    if is_safe_next(target):
        return target  # type: ignore[return-value]
    referrer = request.referrer
    if referrer:
        parts = urlsplit(referrer)
        if parts.netloc == request.host:
            local = urlunsplit(("", "", parts.path, parts.query, parts.fragment))
            if is_safe_next(local):
                return local
    return url_for("transactions.index")


def refused(error: Refused) -> Response:
    """A page's refusal: nothing the view wrote is kept; the person is sent back with the reason."""
    if wants_json():
        return api_error_response(error)
    db.session.rollback()
    flash(error.message, "error")
    return redirect(back_target(), 303)


def init_app(app: Flask) -> None:
    # API blueprints install the JSON translation themselves; this one also covers
    # a refusal raised outside them (e.g. by an app-wide before_request) and every page.
    app.register_error_handler(Refused, refused)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response | str, int]:
        code = error.code or 500
        if isinstance(error, SecurityError):
            # An untrusted Host leaves the request without a URL adapter, so the
            # HTML page (which builds URLs) cannot render; answer in plain text.
            return Response(
                "Bad request: this host name is not served here.\n", code, mimetype="text/plain"
            ), code
        if wants_json():
            body = {"error": {"type": error.name.lower().replace(" ", "_"), "message": error.description}}
            response = jsonify(body)
            # Keep the error's own headers, e.g. Allow on a 405.
            response.headers.extend(
                (name, value) for name, value in error.get_headers() if name.lower() != "content-type"
            )
            return response, code
        if code == 404 and (request.path == "/pay" or request.path.startswith("/pay/")):
            # A customer with a mistyped or cut-off link: not the staff's "sign in" page.
            return render_template("customer/not_found.html", brand_color="#1f6feb"), code
        message = None
        if isinstance(error, CSRFError):
            # flask-wtf's own wording ("The CSRF token is missing.") means nothing to staff.
            message = (
                "This form has expired or did not come from this site (security check: "
                f"{error.description}). Go back, reload the page and try again."
            )
        return render_template("errors/error.html", error=error, code=code, message=message), code

    if app.testing:
        return  # let tests see the real exception

    @app.errorhandler(Exception)
    def unhandled(error: Exception) -> tuple[Response | str, int]:
        log.exception("unhandled_error", path=loggable_path())
        if wants_json():
            body = {"error": {"type": "internal_error", "message": "Something went wrong on our side."}}
            return jsonify(body), 500
        return render_template("errors/error.html", error=None, code=500), 500
