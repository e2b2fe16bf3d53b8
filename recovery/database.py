"""Pooled connections are checked for life only when they have sat idle.

SQLAlchemy's `pool_pre_ping` spends a round trip on every check-out, i.e. on
every request and job; on a busy webhook endpoint it was one statement in two
and a sixth of the worker's time. A connection handed back moments ago is
alive for every practical purpose, so only one idle for longer than
IDLE_PING_AFTER_SECONDS is pinged (the dialect's own ping) and, if dead,
replaced before anyone uses it, as pre-ping would. If the server goes away
within that window, the one request holding the connection fails; SQLAlchemy
then invalidates the whole pool, so the next ones connect afresh.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

IDLE_PING_AFTER_SECONDS = 5.0
_CHECKED_IN_AT = "recovery_checked_in_at"


def ping_when_idle(engine: Engine) -> None:
    """Install the idle check on `engine`'s pool (instead of `pool_pre_ping`)."""

    @event.listens_for(engine, "checkin")
    def note_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_idle(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        checked_in_at = record.info.get(_CHECKED_IN_AT)
        # A connection just made has nothing to check.
        if checked_in_at is None or time.monotonic() - checked_in_at < IDLE_PING_AFTER_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            # The pool drops this connection and checks out another (a new one if need be).
            raise exc.DisconnectionError(f"connection found dead after idling: {error}") from error
