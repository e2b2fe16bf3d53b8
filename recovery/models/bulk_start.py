"""A request to start recoveries for many transactions, and how far it got."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, HasStatus, UTCDateTime, utcnow


class BulkStatus:
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


BS = BulkStatus

BULK_TRANSITIONS = {
    BS.QUEUED: frozenset({BS.RUNNING, BS.FAILED}),
    BS.RUNNING: frozenset({BS.DONE, BS.FAILED}),
    BS.FAILED: frozenset({BS.RUNNING}),  # resumed after the last committed chunk
    BS.DONE: frozenset(),
}


class BulkStart(HasStatus, Base):
    """A bulk start's selection and progress.

    Progress is written in the same commit as each chunk's recoveries, so a
    resumed run starts exactly where the last one ended.
    """

    __tablename__ = "bulk_start"
    TRANSITIONS = BULK_TRANSITIONS
    __table_args__ = (
        Index("ix_bulk_start_org_created", "organization_id", "created_at"),
        # The sweeper's scan for stalled runs.
        Index("ix_bulk_start_status_updated", "status", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    actor_label: Mapped[str] = mapped_column(String(300))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    # The selected transaction ids, in order; `processed` of them are done.
    transaction_ids: Mapped[list[int]] = mapped_column(JSON)
    channel: Mapped[str] = mapped_column(String(8))
    # The list's filter (query-string arguments) when the batch is "all matching"; else empty.
    filters: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=BS.QUEUED)
    total: Mapped[int] = mapped_column(default=0)
    processed: Mapped[int] = mapped_column(default=0)
    started: Mapped[int] = mapped_column(default=0)
    refused: Mapped[int] = mapped_column(default=0)
    # {reason: count} for all refusals; [{"ref": ..., "reason": ...}] for the first few hundred.
    reasons: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    refusals: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(String(1000))
    # Runs of the job so far (a resumed run after a crash adds one).
    runs: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def percent(self) -> int:
        if not self.total:
            return 100 if self.status == BS.DONE else 0
        return min(100, self.processed * 100 // self.total)
