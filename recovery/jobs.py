"""Helpers every RQ job uses: run inside the app, with a clean database pool."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import current_app

from recovery.extensions import db

F = TypeVar("F", bound=Callable[..., Any])


# Set in a child process right after a fork (RQ's forking worker forks a work horse per job).
_forked = False


def _note_fork() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_note_fork)


def _own_pool() -> None:
    """Drop pooled connections inherited through a fork; keep the pool in every other case.

    A forked work horse must not use its parent's connections (nor close them,
    which would close the parent's sockets). The default non-forking worker
    keeps one pool across jobs instead of connecting afresh for each.
    """
    global _forked
    if _forked:
        # Forget the parent's session without closing it: closing would roll back
        # on the parent's connection, over the parent's socket.
        db.session.registry.clear()
        db.engine.dispose(close=False)
        _forked = False


def app_job(func: F) -> F:
    """Run the job as one unit of work, inside the worker's app context, on a database pool of its own.

    What the job wrote commits once when it returns (then its follow-ups run,
    `recovery.unit_of_work`) and rolls back if it raises. The worker is started
    by `flask worker`, so an app context exists.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        current_app.name  # noqa: B018 -- fails loudly outside an app context (`flask worker`)
        _own_pool()
        try:
            result = func(*args, **kwargs)
            db.session.commit()
            return result
        except BaseException:
            db.session.rollback()
            raise
        finally:
            db.session.remove()

    return wrapper  # type: ignore[return-value]
