"""The request boundary: one unit of work per request.

A view returns; then its work commits, once, and the follow-ups it registered
(`recovery.unit_of_work.on_commit`) run. Any exception on the way (a refusal,
an abort, a bug) rolls everything back before the error is answered, so an
error page never shows, and no later statement builds on, half-done work.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, flash, session
from redis.exceptions import RedisError

from recovery.extensions import db
from recovery.unit_of_work import failed_follow_ups

QUEUE_DOWN = (
    "Saved. The job queue is unreachable right now, so what follows from it starts by itself once "
    "the queue is back."
)


class RecoveryApp(Flask):
    def dispatch_request(self) -> Any:
        rv = super().dispatch_request()
        try:
            db.session.commit()
        except Exception:
            # Nothing the view announced has happened: its flashed messages go with it.
            session.pop("_flashes", None)
            raise
        failed = failed_follow_ups(db.session)
        if any(isinstance(error, RedisError) for _, error in failed):
            flash(QUEUE_DOWN, "warning")
        return rv

    def handle_user_exception(self, e: Exception) -> Any:
        db.session.rollback()
        return super().handle_user_exception(e)
