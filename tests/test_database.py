"""Pooled connections: pinged only after idling, replaced when found dead (recovery/database.py).

The server side of a connection is ended for real, with pg_terminate_backend
from another connection, as a PostgreSQL restart or an idle timeout would.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from recovery import database
from recovery.extensions import db as _db


@pytest.fixture
def postgres(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("ends a server connection from another one, which SQLite has not got")
    return database_url


def backend_pid() -> int:
    with _db.engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def terminate(pid: int) -> None:
    admin = create_engine(_db.engine.url, poolclass=NullPool)
    try:
        with admin.connect() as connection:
            assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    finally:
        admin.dispose()


def test_a_connection_that_died_while_idle_is_replaced_unseen(app, postgres, monkeypatch):
    monkeypatch.setattr(database, "IDLE_PING_AFTER_SECONDS", 0.0)  # every connection has idled enough
    dead = backend_pid()
    terminate(dead)

    assert backend_pid() != dead  # no error: the check found it dead and the pool connected afresh


def test_a_connection_used_moments_ago_is_not_pinged(app, postgres, monkeypatch):
    """The saving: no round trip on check-out. The cost: a server gone within the window fails once."""
    monkeypatch.setattr(database, "IDLE_PING_AFTER_SECONDS", 3600.0)
    dead = backend_pid()
    terminate(dead)

    with pytest.raises(OperationalError), _db.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    # SQLAlchemy saw the disconnect and dropped the pool's connections: the next use reconnects.
    assert backend_pid() != dead
