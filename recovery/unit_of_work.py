"""One commit per request and per job, and the work that must wait for it.

A service that makes something true that others act on (a job to queue, a
message to hand over) registers that follow-up with `on_commit`: it runs once
the transaction that made it true has committed, and is dropped if that
transaction rolls back. So no job ever looks for a row that is not there yet,
and no caller has to remember to enqueue after committing.

The boundary commits: a request at the end of its view (`Recovery.dispatch_request`
in `recovery/__init__.py`), a job at its end (`recovery.jobs.app_job`), a CLI
command at its end. The few commits in the middle of an operation go through
`commit_now`, which names why; `grep -rn "commit_now(" recovery` lists them all.

Hooks run from SQLAlchemy's `after_commit`, when the session can no longer
emit SQL: they take plain values (ids, datetimes), never ORM objects. A hook
that fails is logged and the others still run: the transaction has committed
and cannot be taken back, and each follow-up has a sweeper that finds work
whose job was lost (docs/architecture.md, "What is never lost").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, scoped_session

from recovery.logs import get_logger

log = get_logger("recovery.unit_of_work")

AnySession = Session | scoped_session[Any]

_HOOKS = "recovery_on_commit"
_FAILED = "recovery_failed_follow_ups"


@dataclass(frozen=True)
class FollowUp:
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__qualname__}"


def _session(session: AnySession) -> Session:
    return session() if isinstance(session, scoped_session) else session


def on_commit(session: AnySession, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call `fn(*args, **kwargs)` once the session's outermost transaction commits; never if it rolls back."""
    _session(session).info.setdefault(_HOOKS, []).append(FollowUp(fn, args, kwargs))


def pending(session: AnySession) -> list[FollowUp]:
    """The follow-ups waiting for the next commit (tests and logs)."""
    return list(_session(session).info.get(_HOOKS, ()))


def failed_follow_ups(session: AnySession) -> list[tuple[FollowUp, Exception]]:
    """The follow-ups of the last commit that raised, and what they raised; read once, then cleared."""
    failed: list[tuple[FollowUp, Exception]] = _session(session).info.pop(_FAILED, [])
    return failed


def commit_now(session: AnySession, why: str, *, keep_state: bool = False) -> None:
    """Commit in the middle of an operation, because `why` must be durable before it goes on.

    `keep_state` keeps loaded objects as they are instead of expiring them,
    when the caller goes on with what it just wrote (saves a SELECT per object).
    Follow-ups registered so far run after this commit.
    """
    real = _session(session)
    previous = real.expire_on_commit
    real.expire_on_commit = not keep_state and previous
    try:
        real.commit()
    finally:
        real.expire_on_commit = previous


@contextmanager
def savepoint(session: AnySession) -> Iterator[None]:
    """A savepoint (`begin_nested`) whose follow-ups are dropped with it if it rolls back."""
    real = _session(session)
    mark = len(real.info.get(_HOOKS, ()))
    try:
        with real.begin_nested():
            yield
    except BaseException:
        del real.info.get(_HOOKS, [])[mark:]
        raise


@event.listens_for(Session, "after_commit")
def _run_follow_ups(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: the outer transaction can still roll back
    follow_ups: list[FollowUp] = session.info.pop(_HOOKS, [])
    for follow_up in follow_ups:
        try:
            follow_up.fn(*follow_up.args, **follow_up.kwargs)
        except Exception as error:
            log.exception("follow_up_failed", follow_up=follow_up.name)
            session.info.setdefault(_FAILED, []).append((follow_up, error))


@event.listens_for(Session, "after_transaction_end")
def _drop_unless_committed(session: Session, transaction: SessionTransaction) -> None:
    # After a commit the hooks are already gone; what is left belonged to a
    # transaction that rolled back or was closed without committing.
    if transaction.parent is None:
        session.info.pop(_HOOKS, None)
