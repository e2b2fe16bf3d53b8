"""Declarative base, shared column helpers and the status-transition rule."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeAlias

from sqlalchemy import BigInteger, Connection, DateTime, Integer, MetaData
from sqlalchemy import insert as generic_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Session, scoped_session
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL, INTEGER on SQLite (the only type SQLite auto-increments).
BigId = BigInteger().with_variant(Integer(), "sqlite")


# Services take either a plain Session or Flask-SQLAlchemy's scoped `db.session`.
DbSession: TypeAlias = Session | scoped_session[Any]


def insert_ignoring_duplicates(
    session: DbSession | Connection, model: Any, unique_columns: Sequence[str]
) -> Any:
    """INSERT that skips rows clashing on `unique_columns` (ON CONFLICT DO NOTHING), in one statement.

    Cheaper than a savepoint around a plain INSERT, and safe under concurrency.
    """
    dialect = (session.dialect if isinstance(session, Connection) else session.get_bind().dialect).name
    factory: Callable[..., Any] = {"postgresql": pg_insert, "sqlite": sqlite_insert}.get(
        dialect, generic_insert
    )
    stmt = factory(model)
    if dialect in ("postgresql", "sqlite"):
        stmt = stmt.on_conflict_do_nothing(index_elements=list(unique_columns))
    return stmt


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that also comes back aware from SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; use aware UTC datetimes")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class IllegalTransition(ValueError):
    """A status change that the model's rules forbid."""

    def __init__(self, model: str, current: str, new: str) -> None:
        super().__init__(f"{model} cannot move from {current!r} to {new!r}")
        self.model, self.current, self.new = model, current, new


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class HasStatus:
    """Mixin: `status` changes only through `transition`, along `TRANSITIONS`."""

    TRANSITIONS: ClassVar[Mapping[str, frozenset[str]]]
    status: Any

    def can_transition(self, new: str) -> bool:
        return new in self.TRANSITIONS.get(self.status, frozenset())

    def transition(self, new: str) -> bool:
        """Move to `new`; return False if already there, raise IllegalTransition if forbidden."""
        if new not in self.TRANSITIONS:
            raise ValueError(f"unknown status {new!r}")
        if self.status == new:
            return False
        if not self.can_transition(new):
            raise IllegalTransition(type(self).__name__, self.status, new)
        self.status = new
        return True
