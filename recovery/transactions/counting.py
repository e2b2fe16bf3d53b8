"""An exact count of the rows the list's filter matches, bounded in time rather than in rows.

The list itself counts no further than COUNT_CAP ("1,000+"): it runs on every
page view. Before a bulk action staff need the exact figure ("Select all 12,345
matching"), asked for once, when they select a whole page; a COUNT(*) over an
index gives it in well under a second for a million rows, and a statement
that takes longer than `seconds` is stopped so that the answer becomes "more
than N" rather than a page that hangs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from recovery.models import Transaction
from recovery.models.base import DbSession
from recovery.transactions.services import ListQuery, list_filters

# Long enough for a COUNT(*) over a million rows on a busy database, short enough to wait for.
COUNT_SECONDS = 2.0
# SQLite's progress handler runs every this many virtual-machine instructions.
_SQLITE_CHECK_EVERY = 1000


@dataclass(frozen=True)
class MatchCount:
    """How many rows match: `count` exactly, or (when time ran out) more than `count`."""

    count: int
    exact: bool

    def words(self) -> str:
        return f"{self.count:,}" if self.exact else f"more than {self.count:,}"


def count_exact(
    session: DbSession, organization_id: int, query: ListQuery, *, seconds: float = COUNT_SECONDS, floor: int
) -> MatchCount:
    """Count every matching row within `seconds`; past that, "more than `floor`".

    `floor`: what the caller knows already matches (the list's capped count).
    """
    stmt = select(func.count()).select_from(Transaction).where(*list_filters(session, organization_id, query))
    try:
        with _time_limit(session, seconds):
            count = session.scalar(stmt) or 0
    except _TimedOut:
        return MatchCount(floor, False)
    return MatchCount(count, True)


class _TimedOut(Exception):
    pass


@contextmanager
def _time_limit(session: DbSession, seconds: float) -> Iterator[None]:
    """Stop the statements run inside after `seconds`, raising _TimedOut.

    PostgreSQL: `statement_timeout`, set for a savepoint that is rolled back
    afterwards, so the request's own transaction keeps its settings (a SET
    LOCAL would outlive the count) and survives the cancelled statement.
    SQLite has no timeout: a progress handler interrupts the statement.
    """
    if session.get_bind().dialect.name == "postgresql":
        savepoint = session.begin_nested()
        try:
            session.execute(
                select(func.set_config("statement_timeout", f"{max(1, int(seconds * 1000))}ms", True))
            )
            yield
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) == "57014":  # query_canceled
                raise _TimedOut from None
            raise
        finally:
            if savepoint.is_active:
                savepoint.rollback()
        return
    raw = session.connection().connection.driver_connection
    if not isinstance(raw, sqlite3.Connection):  # another driver: no way to bound it, count as is
        yield
        return
    deadline = time.monotonic() + seconds
    raw.set_progress_handler(lambda: int(time.monotonic() > deadline), _SQLITE_CHECK_EVERY)
    try:
        yield
    except OperationalError as error:
        if "interrupted" in str(error.orig):
            raise _TimedOut from None
        raise
    finally:
        raw.set_progress_handler(None, 0)
