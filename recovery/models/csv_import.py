"""An uploaded CSV of failed transactions and how far its import got."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, deferred, mapped_column

from recovery.models.base import Base, BigId, HasStatus, UTCDateTime, utcnow


class ImportStatus:
    MAPPING = "mapping"  # uploaded; waits for staff to confirm which column is which
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


IS = ImportStatus

IMPORT_TRANSITIONS = {
    IS.MAPPING: frozenset({IS.QUEUED}),
    IS.QUEUED: frozenset({IS.RUNNING, IS.FAILED}),
    IS.RUNNING: frozenset({IS.DONE, IS.FAILED}),
    IS.FAILED: frozenset({IS.RUNNING}),  # a retried job resumes after the last chunk
    IS.DONE: frozenset(),
}


class CsvImport(HasStatus, Base):
    __tablename__ = "csv_import"
    TRANSITIONS = IMPORT_TRANSITIONS
    __table_args__ = (Index("ix_csv_import_org_created", "organization_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    filename: Mapped[str] = mapped_column(String(255))
    # Kept in the database, not on disk, so a worker on another machine can read
    # it; cleared once the import ends.
    content: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))
    status: Mapped[str] = mapped_column(String(16), default=IS.QUEUED)
    total_rows: Mapped[int] = mapped_column(default=0)
    processed_rows: Mapped[int] = mapped_column(default=0)
    imported_rows: Mapped[int] = mapped_column(default=0)
    duplicate_rows: Mapped[int] = mapped_column(default=0)
    invalid_rows: Mapped[int] = mapped_column(default=0)
    # Rows whose status column says the payment did not fail (paid, refunded...).
    skipped_rows: Mapped[int] = mapped_column(default=0)
    # The confirmed column mapping, target field → normalised column name; the job reads it.
    mapping: Mapped[dict[str, str] | None] = mapped_column(JSON)
    # [{"row": 7, "ref": "...", "reason": "..."}], capped in size by the importer.
    problems: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Rows imported with a detail left out (an unusable phone...), same shape, same cap.
    warnings: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def percent(self) -> int:
        if not self.total_rows:
            return 100 if self.status == IS.DONE else 0
        return min(100, self.processed_rows * 100 // self.total_rows)
