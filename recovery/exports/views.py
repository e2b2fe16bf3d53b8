"""The lists' CSV downloads: each list's own URL with /export.csv, taking the list's filters.

Viewers may export: a file holds nothing their role cannot already read page
by page, and exports are recorded in the audit log (action `export.<list>`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, request, stream_with_context
from flask_login import current_user
from werkzeug.exceptions import BadRequest
from werkzeug.wrappers import Response

from recovery.audit import Actor
from recovery.exports import services
from recovery.extensions import db
from recovery.models import utcnow

bp = Blueprint("exports", __name__)

Build = Callable[[Any, int, Mapping[str, Any]], services.Export]


def _download(build: Build) -> Response:
    try:
        export = build(db.session, current_user.organization_id, request.args)
    except services.ExportRefused as error:
        raise BadRequest(f"This export cannot be made: {error.message}") from None
    actor = Actor.for_user(current_user, request.remote_addr)
    response = Response(stream_with_context(services.stream(db.session, actor, export)), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{export.filename(utcnow().date())}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/transactions/export.csv")
def transactions() -> Response:
    return _download(services.transactions_export)


@bp.get("/recoveries/export.csv")
def recoveries() -> Response:
    return _download(services.recoveries_export)


@bp.get("/outbox/export.csv")
def outbox() -> Response:
    return _download(services.outbox_export)
