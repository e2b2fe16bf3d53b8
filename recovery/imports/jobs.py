"""RQ jobs for CSV imports."""

from __future__ import annotations

from recovery.config import settings
from recovery.extensions import db
from recovery.imports.running import run_import
from recovery.jobs import app_job


@app_job
def import_csv(import_id: int) -> dict[str, int]:
    """Import a stored CSV file. Safe to run twice: it resumes after the last chunk."""
    csv_import = run_import(db.session, import_id, settings().csv_chunk_rows)
    return {
        "imported": csv_import.imported_rows,
        "duplicates": csv_import.duplicate_rows,
        "invalid": csv_import.invalid_rows,
    }
