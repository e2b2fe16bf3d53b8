"""The request boundary: one unit of work per request.

A view returns; then its work commits, once, and the follow-ups it registered
(`recovery.unit_of_work.on_commit`) run. Any exception on the way (a refusal,
an abort, a bug) rolls everything back before the error is answered, so an
error page never shows, and no later statement builds on, half-done work.

A view marked `@read_only` never writes: its request runs on a connection in
autocommit, so the database sees no BEGIN and no COMMIT or ROLLBACK, only the
reads (two round trips instead of four for the transactions list). The
reads then see separate snapshots, which a page that only shows rows can
afford. A read-only request that tries to write raises `WroteWhileReadOnly`
instead of autocommitting half of its work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from flask import Flask, flash, request, session
from flask.wrappers import Response
from redis.exceptions import RedisError
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from recovery.extensions import db
from recovery.unit_of_work import AnySession, failed_follow_ups

QUEUE_DOWN = (
    "Saved. The job queue is unreachable right now, so what follows from it starts by itself once "
    "the queue is back."
)


F = TypeVar("F", bound=Callable[..., Any])

_READ_ONLY = "recovery_read_only"


class WroteWhileReadOnly(RuntimeError):
    """A view marked `@read_only` (or what it called) tried to write."""


def read_only(view: F) -> F:
    """Mark `view` as one that never writes, so its request runs without a transaction."""
    view.read_only = True  # type: ignore[attr-defined]
    return view


def is_read_only(view: Callable[..., Any] | None) -> bool:
    return bool(getattr(view, "read_only", False))


@contextmanager
def without_transaction(session: AnySession) -> Iterator[None]:
    """Run the block's database work in autocommit, refusing any write.

    The connection is switched before its first statement (flask-login loads
    the user in a before_request), and SQLAlchemy switches it back when it
    returns to the pool, so the next request gets a transaction again. A
    session already in a transaction keeps it (only tests, which share one
    session across requests, get here so): the block is still refused writes.
    Both databases: sqlite3 in autocommit only stops opening transactions
    before writes, and there are none, so SQLite reads as before and the
    tests run the same path on both.
    """
    real = session() if not isinstance(session, Session) else session
    transaction = None
    if not real.in_transaction():
        real.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        transaction = real.get_transaction()
    real.info[_READ_ONLY] = True
    try:
        yield
    finally:
        real.info.pop(_READ_ONLY, None)
        # Normally the boundary's commit has ended it; not when a before_request answered.
        if transaction is not None and real.get_transaction() is transaction:
            real.rollback()


@event.listens_for(Session, "before_flush")
def _refuse_flush(session: Session, _flush: UOWTransaction, _instances: object) -> None:
    if session.info.get(_READ_ONLY):
        raise WroteWhileReadOnly(f"a read-only view tried to write: {_changes(session)}")


@event.listens_for(Session, "do_orm_execute")
def _refuse_dml(state: ORMExecuteState) -> None:
    if state.session.info.get(_READ_ONLY) and (state.is_insert or state.is_update or state.is_delete):
        raise WroteWhileReadOnly(f"a read-only view tried to run {state.statement}")


def _changes(session: Session) -> str:
    changed = [*session.new, *session.dirty, *session.deleted]
    return ", ".join(sorted({type(instance).__name__ for instance in changed}))


class RecoveryApp(Flask):
    def full_dispatch_request(self) -> Response:
        if not is_read_only(self.view_functions.get(request.endpoint or "")):
            return super().full_dispatch_request()
        with without_transaction(db.session):
            return super().full_dispatch_request()

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
