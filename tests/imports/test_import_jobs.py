"""CSV imports run by the worker: big files through a real RQ worker, a chunk that fails, a resume."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy import func, select

from recovery.imports import running, services
from recovery.models import Transaction, User
from tests.fixtures.csvdata import csv_bytes, row, rows
from tests.fixtures.imports import count, imported_refs, the_import, upload

# --- big files: the RQ job -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("app_config", [{"CSV_INLINE_MAX_ROWS": 100, "CSV_CHUNK_ROWS": 2500}])
def test_ten_thousand_rows_through_a_real_rq_worker(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, rq_worker: Callable[[], None]
) -> None:
    user = signed_in("operator")
    data = csv_bytes(rows(10_000))

    response = upload(client, data, filename="big.csv")

    assert response.status_code == 302
    csv_import = the_import(db)
    assert (csv_import.status, csv_import.total_rows, csv_import.processed_rows) == ("queued", 10_000, 0)
    assert count(db, Transaction) == 0  # not imported inline

    # While queued, the progress partial polls for itself.
    partial = client.get(response.headers["Location"], headers={"HX-Request": "true"})
    assert partial.status_code == 200
    fragment = partial.get_data(as_text=True)
    assert "<html" not in fragment
    assert f'hx-get="/imports/{csv_import.id}"' in fragment
    assert 'hx-trigger="every 1s"' in fragment
    assert 'hx-swap="outerHTML"' in fragment
    assert '<progress id="import-bar" max="100" value="0"' in fragment
    assert "0 of 10,000 rows checked" in fragment

    rq_worker()

    csv_import = the_import(db)
    assert csv_import.status == "done", csv_import.error
    assert (csv_import.processed_rows, csv_import.imported_rows) == (10_000, 10_000)
    assert (csv_import.duplicate_rows, csv_import.invalid_rows) == (0, 0)
    assert csv_import.finished_at is not None
    assert csv_import.content is None  # the stored file is dropped once imported
    assert count(db, Transaction) == 10_000
    assert (
        db.session.scalar(
            select(func.count(func.distinct(Transaction.transaction_ref))).where(
                Transaction.organization_id == user.organization_id, Transaction.import_id == csv_import.id
            )
        )
        == 10_000
    )

    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert '<span class="status status-done">done</span>' in page
    assert '<progress id="import-bar" max="100" value="100"' in page
    assert "10,000 of 10,000 rows checked" in page
    assert '<dd id="imported-count">10,000</dd>' in page
    assert "hx-trigger" not in page  # finished: polling stops
    # The dashboard now shows them, with the capped count.
    assert "1,000+ transactions" in client.get("/transactions").get_data(as_text=True)


@pytest.mark.parametrize("app_config", [{"CSV_INLINE_MAX_ROWS": 0}])
def test_queued_import_offers_start_again_and_the_worker_finishes_it(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, rq_worker: Callable[[], None]
) -> None:
    signed_in("operator")
    response = upload(client, csv_bytes(rows(3)))
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Start again" in page
    assert '<span class="status status-queued">queued</span>' in page
    rq_worker()
    assert the_import(db).status == "done"
    assert count(db, Transaction) == 3


# --- chunk atomicity -----------------------------------------------------------------

POISON = "CSV-000015"


@pytest.fixture
def poisoned_ref(db: Any) -> Iterator[str]:
    """Make the database itself refuse one row, as a constraint would, on either backend."""
    engine = db.engine
    db.session.rollback()  # DDL waits for every open transaction on the table, ours included
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(
                sa.text(
                    "CREATE FUNCTION test_refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    f"BEGIN IF NEW.transaction_ref = '{POISON}' THEN "
                    "RAISE EXCEPTION 'row refused by the database'; END IF; RETURN NEW; END $$"
                )
            )
            conn.execute(
                sa.text(
                    'CREATE TRIGGER test_refuse_poison BEFORE INSERT ON "transaction" '
                    "FOR EACH ROW EXECUTE FUNCTION test_refuse_poison()"
                )
            )
        else:
            conn.execute(
                sa.text(
                    'CREATE TRIGGER test_refuse_poison BEFORE INSERT ON "transaction" '
                    f"WHEN NEW.transaction_ref = '{POISON}' "
                    "BEGIN SELECT RAISE(ABORT, 'row refused by the database'); END"
                )
            )
    try:
        yield POISON
    finally:
        cure(db)


def cure(db: Any) -> None:
    engine = db.engine
    db.session.rollback()  # DDL waits for every open transaction on the table, ours included
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(sa.text('DROP TRIGGER IF EXISTS test_refuse_poison ON "transaction"'))
            conn.execute(sa.text("DROP FUNCTION IF EXISTS test_refuse_poison()"))
        else:
            conn.execute(sa.text("DROP TRIGGER IF EXISTS test_refuse_poison"))


@pytest.mark.parametrize("app_config", [{"CSV_INLINE_MAX_ROWS": 0, "CSV_CHUNK_ROWS": 10}])
def test_a_failing_chunk_leaves_no_rows_and_a_rerun_resumes(
    client: FlaskClient,
    signed_in: Callable[..., User],
    db: Any,
    rq_worker: Callable[[], None],
    poisoned_ref: str,
    app: Any,
) -> None:
    signed_in("operator")
    # 35 rows in chunks of 10: the poisoned row is the 5th of the second chunk.
    response = upload(client, csv_bytes(rows(35)))
    import_id = the_import(db).id

    with pytest.raises(
        Exception, match="row refused by the database"
    ):  # the driver's own error (COPY) or SQLAlchemy's
        running.run_import(db.session, import_id, app.config["CSV_CHUNK_ROWS"])

    csv_import = the_import(db)
    assert csv_import.status == "failed"
    assert "row refused by the database" in (csv_import.error or "")
    # The first chunk stays, the second left nothing behind: not even its rows before the poison.
    assert imported_refs(db) == [f"CSV-{n:06d}" for n in range(1, 11)]
    assert (csv_import.processed_rows, csv_import.imported_rows) == (10, 10)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "The import stopped: " in page
    assert "row refused by the database" in page
    assert "Start again" in page

    cure(db)
    assert client.post(f"/imports/{import_id}/retry").status_code == 302
    rq_worker()

    csv_import = the_import(db)
    assert csv_import.status == "done", csv_import.error
    assert imported_refs(db) == [f"CSV-{n:06d}" for n in range(1, 36)]  # each once
    assert (csv_import.processed_rows, csv_import.imported_rows) == (35, 35)
    assert (csv_import.duplicate_rows, csv_import.invalid_rows) == (0, 0)


@pytest.mark.parametrize("app_config", [{"CSV_CHUNK_ROWS": 10}])
def test_a_failing_inline_import_shows_its_page_not_an_error(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, poisoned_ref: str
) -> None:
    signed_in("operator")

    response = upload(client, csv_bytes(rows(20)))

    assert response.status_code == 302
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "The import stopped" in page
    assert the_import(db).status == "failed"
    assert imported_refs(db) == [f"CSV-{n:06d}" for n in range(1, 11)]


def test_resume_does_not_drop_a_valid_row_whose_ref_was_invalid_earlier(
    signed_in: Callable[..., User], db: Any, client: FlaskClient, app: Any
) -> None:
    """A re-run must decide duplicates as a single run would."""
    signed_in("operator")
    records = [row(1, amount="oops"), row(2), row(3), row(1)]  # row 1's first copy is invalid
    app.config["CSV_INLINE_MAX_ROWS"] = 0
    upload(client, csv_bytes(records))
    csv_import = the_import(db)
    # As if a worker had died after the first chunk of two rows.
    running._import_chunk(
        db.session, csv_import, list(services.iter_rows(csv_import.content.decode()))[:2], set()
    )
    csv_import.status = "failed"
    db.session.commit()

    running.run_import(db.session, csv_import.id, 2)

    csv_import = the_import(db)
    assert csv_import.status == "done"
    assert imported_refs(db) == ["CSV-000001", "CSV-000002", "CSV-000003"]
    assert (csv_import.imported_rows, csv_import.invalid_rows, csv_import.duplicate_rows) == (3, 1, 0)
