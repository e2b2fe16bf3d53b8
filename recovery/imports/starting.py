"""Start a mapped import: a small file at once, in the request; a larger one by the worker.

The upload page, its "Start again" button and the API start imports the same
way, here. An import has no sweeper that finds it if its job is lost, so the
job is placed right after a named commit, where a queue that cannot be reached
is answered to the person (press "Start again") rather than left to a
generic after-commit warning.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import exists, select

from recovery import audit
from recovery.audit import Actor
from recovery.config import settings
from recovery.imports import running
from recovery.imports.jobs import import_csv
from recovery.logs import get_logger
from recovery.models import (
    BulkStart,
    BulkStatus,
    CsvImport,
    ImportStatus,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
)
from recovery.models.base import DbSession
from recovery.queue import enqueue
from recovery.recoveries import bulk
from recovery.unit_of_work import commit_now

log = get_logger("recovery.imports")

# Long enough for the largest file the size limit admits, chunk after chunk.
JOB_TIMEOUT = 30 * 60


@dataclass(frozen=True)
class ImportSettings:
    """Files of up to `max_bytes`; up to `inline_max_rows` rows at once, in chunks of `chunk_rows`."""

    max_bytes: int
    inline_max_rows: int
    chunk_rows: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImportSettings:
        return cls(
            max_bytes=int(config["CSV_MAX_BYTES"]),
            inline_max_rows=int(config["CSV_INLINE_MAX_ROWS"]),
            chunk_rows=int(config["CSV_CHUNK_ROWS"]),
        )


def import_settings() -> ImportSettings:
    """The app's import settings, read from its config once."""
    return settings(ImportSettings)


class Started(enum.Enum):
    DONE = "done"  # imported at once
    FAILED = "failed"  # imported at once, and stopped: the import's page says why
    QUEUED = "queued"  # the worker has it
    QUEUE_DOWN = "queue_down"  # saved, but not started: "Start again" once the queue is back


def start_import(session: DbSession, csv_import: CsvImport, limits: ImportSettings) -> Started:
    """Import the mapped file now if it is small, else hand it to the worker."""
    if csv_import.total_rows <= limits.inline_max_rows:
        try:
            running.run_import(session, csv_import.id, limits.chunk_rows)
        except Exception:  # logged, and stored as the import's error: its page explains
            return Started.FAILED
        return Started.DONE
    return _queue(session, csv_import.id)


def restart_import(session: DbSession, actor: Actor, csv_import: CsvImport) -> Started | None:
    """Hand a queued or stopped import to the worker again; None if it is neither.

    It resumes after its last committed chunk.
    """
    if csv_import.status not in (ImportStatus.QUEUED, ImportStatus.FAILED):
        return None
    audit.record(session, actor, "import.restarted", target_type="csv_import", target_id=csv_import.id)
    return _queue(session, csv_import.id)


def _queue(session: DbSession, import_id: int) -> Started:
    commit_now(session, "the import stands, queued, even if its job cannot be placed")
    try:
        enqueue(import_csv, import_id, job_timeout=JOB_TIMEOUT, description=f"CSV import {import_id}")
    except RedisError:
        log.exception("csv_import_enqueue_failed", import_id=import_id)
        return Started.QUEUE_DOWN
    return Started.QUEUED


def start_recoveries(
    session: DbSession, actor: Actor, csv_import: CsvImport, channel: str = "any"
) -> list[BulkStart]:
    """Start recoveries for the failed transactions the import added, as the organization's rules say.

    "Start recoveries" after an import: every transaction of the import still
    failed and never recovered goes to a bulk start (one per
    `bulk.MAX_TRANSACTIONS`), whose runs decide each by the rules, like any
    start without a campaign. Safe to ask twice: a transaction started by the
    first is no longer failed-and-never-started, nor one a rule marked or held. BulkRefused if the import is
    not done or has nothing waiting.
    """
    if csv_import.organization_id != actor.organization_id or csv_import.status != ImportStatus.DONE:
        raise bulk.BulkRefused("Recoveries start once the import is done.", status=409)
    started_before = exists().where(RecoveryAttempt.transaction_id == Transaction.id)
    ids = list(
        session.scalars(
            select(Transaction.id)
            .where(
                Transaction.organization_id == csv_import.organization_id,
                Transaction.import_id == csv_import.id,
                Transaction.status == TransactionStatus.FAILED,
                # What a rule already decided (not recovered, or the review queue) stays decided.
                Transaction.no_recovery_reason.is_(None),
                Transaction.review_status.is_(None),
                ~started_before,
            )
            .order_by(Transaction.id)
        )
    )
    # A bulk start still on its way will start (or decide) these: asking twice starts nothing twice.
    in_flight = {
        transaction_id
        for listed in session.scalars(
            select(BulkStart.transaction_ids).where(
                BulkStart.organization_id == csv_import.organization_id,
                BulkStart.status.in_((BulkStatus.QUEUED, BulkStatus.RUNNING)),
            )
        )
        for transaction_id in listed
    }
    ids = [transaction_id for transaction_id in ids if transaction_id not in in_flight]
    if not ids:
        raise bulk.BulkRefused("No transaction of this import is waiting for a recovery.", status=409)
    size = bulk.MAX_TRANSACTIONS
    starts = [bulk.create(session, actor, ids[at : at + size], channel) for at in range(0, len(ids), size)]
    audit.record(
        session,
        actor,
        "import.recoveries_started",
        target_type="csv_import",
        target_id=csv_import.id,
        transactions=len(ids),
        bulk_starts=[b.id for b in starts],
    )
    return starts
