"""HTML error pages for people, JSON errors for the API and health check."""

from __future__ import annotations

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, SecurityError
from werkzeug.wrappers import Response

from recovery.api.errors import ApiError, api_error_response
from recovery.logs import get_logger, loggable_path

log = get_logger("recovery.errors")


def wants_json() -> bool:
    return request.path.startswith("/v1/") or request.path in ("/v1", "/healthz")


def init_app(app: Flask) -> None:
    # API blueprints install this handler themselves; here it also covers an
    # ApiError raised outside them (e.g. by an app-wide before_request).
    app.register_error_handler(ApiError, api_error_response)

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
