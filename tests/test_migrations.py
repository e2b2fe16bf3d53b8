"""The migrations build, from an empty database, exactly the schema the models describe.

Each backend gets a database nobody else uses: a fresh SQLite file, and a
PostgreSQL database created for the test and dropped after it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from recovery import create_app
from recovery.extensions import db
from recovery.models import Base
from tests.conftest import PG_URL, REDIS_URL, base_config, missing


def _pg_admin_url() -> sa.URL:
    url = sa.make_url(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    return url.set(database="postgres")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with no tables at all, removed after the test."""
    if request.param == "sqlite":
        path = tmp_path / "empty.sqlite3"
        assert not path.exists()
        yield f"sqlite:///{path}"
        return
    name = f"recovery_migrations_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as error:
        admin.dispose()
        missing(f"PostgreSQL not reachable at {PG_URL}: {str(error).splitlines()[0]}")
    try:
        yield _pg_admin_url().set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _table_names() -> set[str]:
    return set(sa.inspect(db.engine).get_table_names())


# SQLite cannot reflect an expression index, so neither SQLAlchemy nor Alembic can compare
# the search indexes there; tests/transactions/test_search.py checks the migrated SQLite database uses them.
@pytest.mark.filterwarnings(
    "ignore:Skipped unsupported reflection of expression-based index",
    "ignore:autogenerate skipping metadata-specified expression-based index",
)
def test_empty_database_upgrades_to_head_matching_the_models_and_downgrades(empty_database_url: str) -> None:
    app = create_app(base_config(empty_database_url, REDIS_URL))
    with app.app_context():
        assert _table_names() == set(), "the database must start empty"

        upgrade()

        model_tables = {table.name for table in Base.metadata.sorted_tables}
        assert _table_names() == model_tables | {"alembic_version"}
        with db.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            differences = compare_metadata(context, Base.metadata)
        assert differences == [], f"models and migrations disagree: {differences}"

        downgrade(revision="base")

        assert _table_names() <= {"alembic_version"}
        with db.engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM alembic_version")) == 0

        # And back up again: the downgrade left nothing behind that blocks a re-run.
        upgrade()
        assert _table_names() == model_tables | {"alembic_version"}
        db.session.remove()
        db.engine.dispose()
