"""Read-only views: no transaction around their reads, nothing written, the connection back to normal."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from recovery.boundary import WroteWhileReadOnly, read_only
from recovery.extensions import csrf
from recovery.models import Organization


@dataclass(frozen=True)
class Statement:
    sql: str
    connection: int  # id() of the driver's connection
    autocommit: bool
    in_transaction: bool  # what the driver says after the statement: a BEGIN was sent


def _driver_state(dbapi_connection: Any) -> tuple[bool, bool]:
    """Autocommit and "in a transaction", as the driver itself knows them (no round trip)."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        return dbapi_connection.isolation_level is None, dbapi_connection.in_transaction
    from psycopg.pq import TransactionStatus

    status = dbapi_connection.info.transaction_status
    return bool(dbapi_connection.autocommit), status != TransactionStatus.IDLE


@pytest.fixture
def statements(db: Any) -> Iterator[list[Statement]]:
    seen: list[Statement] = []

    def note(conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        dbapi_connection = conn.connection.dbapi_connection
        seen.append(Statement(sql, id(dbapi_connection), *_driver_state(dbapi_connection)))

    sa.event.listen(db.engine, "after_cursor_execute", note)
    yield seen
    sa.event.remove(db.engine, "after_cursor_execute", note)


def stored_name(db: Any, org_id: int) -> str:
    with db.engine.connect() as conn:
        return str(conn.scalar(sa.select(Organization.name).where(Organization.id == org_id)))


@pytest.fixture
def pages(app: Flask, db: Any, org: Organization, signed_in: Callable[..., Any]) -> int:
    """Read-only views that read, rename `org` or UPDATE it, and a normal one that renames then fails.

    Returns `org`'s id; the client is signed in to it and the session holds no transaction.
    """
    org_id = org.id

    @read_only
    def names() -> str:
        return ", ".join(db.session.scalars(sa.select(Organization.name)))

    @read_only
    def rename() -> str:
        db.session.get(Organization, org_id).name = "Renamed by a read-only view"
        return "renamed"

    @read_only
    def update() -> str:
        db.session.execute(sa.update(Organization).values(name="Updated by a read-only view"))
        return "updated"

    def rename_then_fail() -> str:
        db.session.get(Organization, org_id).name = "Renamed, then failed"
        db.session.flush()
        raise RuntimeError("a bug after the UPDATE")

    app.add_url_rule("/_ro/names", "ro_names", names)
    app.add_url_rule("/_ro/rename", "ro_rename", rename)
    app.add_url_rule("/_ro/update", "ro_update", update)
    app.add_url_rule("/_ro/fail", "ro_fail", csrf.exempt(rename_then_fail), methods=["POST"])
    signed_in("owner", org)
    db.session.commit()  # the test's own reads must not leave a transaction open
    return org_id


def test_a_read_only_view_reads_without_a_transaction(
    client: FlaskClient, db: Any, org: Organization, pages: int, statements: list[Statement]
) -> None:
    response = client.get("/_ro/names")
    ran = list(statements)

    assert not db.session().in_transaction()
    assert len(ran) == 2  # the signed-in user, then the view's names
    assert all(s.autocommit and not s.in_transaction for s in ran), ran
    assert response.status_code == 200
    assert org.name in response.text


def test_the_next_request_on_that_connection_has_a_transaction_again(
    client: FlaskClient, db: Any, org: Organization, pages: int, statements: list[Statement]
) -> None:
    client.get("/_ro/names")
    read_on = {s.connection for s in statements}

    statements.clear()
    with pytest.raises(RuntimeError, match="a bug after the UPDATE"):
        client.post("/_ro/fail")

    assert {s.connection for s in statements} == read_on  # the pool handed back the same one
    assert not any(s.autocommit for s in statements), statements
    (written,) = [s for s in statements if s.sql.startswith("UPDATE organization")]
    assert written.in_transaction
    assert stored_name(db, pages) == org.name  # the UPDATE was rolled back with the request


@pytest.mark.parametrize("path", ["/_ro/rename", "/_ro/update"])
def test_a_read_only_view_that_writes_fails_and_writes_nothing(
    client: FlaskClient, db: Any, org: Organization, pages: int, path: str
) -> None:
    with pytest.raises(WroteWhileReadOnly):
        client.get(path)

    assert not db.session().in_transaction()
    assert stored_name(db, pages) == org.name


def test_a_read_only_page_answered_before_its_view_leaves_no_transaction(
    app: Flask, db: Any, pages: int
) -> None:
    response = app.test_client().get("/_ro/names")  # not signed in: require_login redirects

    assert response.status_code == 302
    assert not db.session().in_transaction()
    db.session.get(Organization, pages).name = "Renamed by the test"
    db.session.commit()  # the guard went with the request
    assert stored_name(db, pages) == "Renamed by the test"


def test_the_transactions_list_reads_without_a_transaction(
    client: FlaskClient,
    db: Any,
    org: Organization,
    signed_in: Callable[..., Any],
    make_transaction: Callable[..., Any],
    statements: list[Statement],
) -> None:
    reference = make_transaction(org=org).transaction_ref
    signed_in("viewer", org)
    db.session.commit()
    statements.clear()

    response = client.get("/transactions")
    ran = list(statements)

    assert response.status_code == 200
    assert reference in response.text
    assert ran and all(s.autocommit and not s.in_transaction for s in ran), ran
