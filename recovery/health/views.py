"""`GET /healthz`: is the database reachable, is Redis reachable."""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text
from werkzeug.wrappers import Response

from recovery.extensions import db
from recovery.logs import get_logger
from recovery.queue import redis_connection

bp = Blueprint("health", __name__)
log = get_logger("recovery.health")


def _check(name: str, probe: object) -> dict[str, str]:
    try:
        probe()  # type: ignore[operator]
    except Exception as error:  # any failure means "not healthy", reported, never raised
        log.warning("health_check_failed", check=name, error=str(error))
        return {"status": "error", "error": type(error).__name__}
    return {"status": "ok"}


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    checks = {
        "database": _check("database", lambda: db.session.execute(text("SELECT 1"))),
        "redis": _check("redis", lambda: redis_connection().ping()),
    }
    # Not the request's commit: a failed probe leaves the transaction broken, and committing
    # it would turn the 503 into a 500.
    db.session.rollback()
    healthy = all(c["status"] == "ok" for c in checks.values())
    return jsonify(status="ok" if healthy else "error", checks=checks), 200 if healthy else 503
