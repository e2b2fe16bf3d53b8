"""Helpers every RQ job uses: run inside the app, with a clean database pool."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import current_app

from recovery.extensions import db

F = TypeVar("F", bound=Callable[..., Any])


def app_job(func: F) -> F:
    """Run the job inside the worker's app context.

    The worker is started by `flask worker`, so an app context exists; RQ forks a
    work horse per job, and connections inherited from the parent must not be
    shared, so the pool is reset (without closing the parent's sockets) first.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        current_app.name  # noqa: B018 -- fails loudly outside an app context (`flask worker`)
        db.engine.dispose(close=False)
        try:
            return func(*args, **kwargs)
        finally:
            db.session.remove()

    return wrapper  # type: ignore[return-value]
