"""Start recoveries for many transactions at once, as an RQ job whose progress the dashboard follows.

Each transaction goes through `services.start_recovery`, so every rule (one
active attempt, reachable channels, excluded failure codes, paid already)
holds exactly as for one. A refusal is counted and listed, never stops the
batch. The job commits once per chunk, then schedules the first sends of
that chunk (after the commit that made them true).

The batch is either the rows checked on one page of the list (`parse_ids`) or,
like Gmail's "select all conversations that match this search", every row the
list's filter matches (`select_matching`), resolved in the request with the
list's own parsing and query, ids only.

Progress lives in the RQ job's meta (no table): counts, the refusals (the
first MAX_LISTED), and the state. The job is kept a day after it ends, so
its page can be revisited; the audit log keeps the lasting record.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import select

from recovery import audit
from recovery.audit import Actor
from recovery.extensions import db
from recovery.jobs import app_job
from recovery.logs import get_logger
from recovery.models import Transaction, utcnow
from recovery.models.base import DbSession
from recovery.queue import get_queue
from recovery.recoveries import jobs, services
from recovery.transactions import services as transactions

log = get_logger("recovery.recoveries")

CHUNK = 50
# One request may ask for this many; a page of the list holds 50.
MAX_TRANSACTIONS = 5000
# A filter that matches too many is counted this far, so the refusal can say how many
# without counting a large merchant's whole history.
REFUSAL_COUNT_CAP = 100_000
# Refusals listed on the progress page; all of them are counted.
MAX_LISTED = 500
KEEP_SECONDS = 24 * 3600
JOB_TIMEOUT = 30 * 60
JOB_PREFIX = "bulk-start-"

# "any": every channel each customer can be reached on (start_recovery's default).
CHANNEL_OPTIONS = {"any": None, "email": ["email"], "sms": ["sms"]}


class BulkRefused(Exception):
    """The request itself is unusable (nothing selected, too many, a bad filter)."""


@dataclass(frozen=True)
class Selection:
    """The transactions a request asks for; `filters` when they came from the list's filter."""

    ids: list[int]
    filters: dict[str, str] | None = None


@dataclass
class Progress:
    """What the progress page shows; stored in the job's meta."""

    organization_id: int
    total: int
    channel: str
    state: str = "queued"  # queued, running, done, failed
    processed: int = 0
    started: int = 0
    refused: int = 0
    refusals: list[dict[str, str]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    # The list's filter (query-string arguments) when the batch is "all matching"; else empty.
    filters: dict[str, str] = field(default_factory=dict)

    @property
    def percent(self) -> int:
        return 100 if not self.total else round(100 * self.processed / self.total)

    @property
    def running(self) -> bool:
        return self.state in ("queued", "running")

    def refuse(self, ref: str, reason: str) -> None:
        self.refused += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.refusals) < MAX_LISTED:
            self.refusals.append({"ref": ref, "reason": reason})

    def to_meta(self) -> dict[str, Any]:
        return {"bulk": self.__dict__.copy()}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress | None:
        values = meta.get("bulk")
        return cls(**values) if isinstance(values, dict) else None


def parse_ids(raw: Sequence[str]) -> list[int]:
    """The selected transaction ids, deduplicated in order; BulkRefused if none or too many."""
    ids: list[int] = []
    seen: set[int] = set()
    for value in raw:
        try:
            number = int(value)
        except (TypeError, ValueError):
            continue
        if 0 < number < 2**63 and number not in seen:
            seen.add(number)
            ids.append(number)
    if not ids:
        raise BulkRefused("Select at least one transaction.")
    if len(ids) > MAX_TRANSACTIONS:
        raise BulkRefused(f"Select at most {MAX_TRANSACTIONS:,} transactions at a time.")
    return ids


def select_matching(session: DbSession, organization_id: int, args: Mapping[str, str]) -> Selection:
    """Every transaction of the organization the list's filter in `args` matches, in the list's order.

    Parsed and queried exactly as the list does (its page cursor is ignored: all
    pages at once). BulkRefused with the list's own messages for a bad filter
    value, and when more than MAX_TRANSACTIONS match: truncating silently would
    start some and leave the rest unnoticed.
    """
    query = transactions.ListQuery.from_args({name: args.get(name) for name in transactions.FILTER_ARGS})
    if query.errors:
        raise BulkRefused(" ".join(query.errors.values()))
    ids = transactions.matching_ids(session, organization_id, query, limit=MAX_TRANSACTIONS + 1)
    if not ids:
        raise BulkRefused("No transactions match this filter.")
    if len(ids) > MAX_TRANSACTIONS:
        count = transactions.count_matching(session, organization_id, query, cap=REFUSAL_COUNT_CAP)
        matched = f"More than {REFUSAL_COUNT_CAP:,}" if count > REFUSAL_COUNT_CAP else f"{count:,}"
        raise BulkRefused(f"{matched} transactions match; narrow the filter to at most {MAX_TRANSACTIONS:,}.")
    return Selection(ids, query.filter_args())


def enqueue(
    actor: Actor, transaction_ids: list[int], channel: str, filters: dict[str, str] | None = None
) -> str:
    """Queue the batch and return its job id; raises RedisError if the queue is unreachable."""
    if channel not in CHANNEL_OPTIONS:
        raise BulkRefused("Choose how to send: email, SMS, or both.")
    job_id = f"{JOB_PREFIX}{uuid.uuid4().hex}"
    progress = Progress(actor.organization_id, len(transaction_ids), channel, filters=filters or {})
    description = f"Start {len(transaction_ids)} recoveries" + (" matching a filter" if filters else "")
    get_queue().enqueue(
        start_many,
        actor.organization_id,
        actor.label,
        actor.user_id,
        actor.ip_address,
        transaction_ids,
        channel,
        filters,
        job_id=job_id,
        meta=progress.to_meta(),
        job_timeout=JOB_TIMEOUT,
        result_ttl=KEEP_SECONDS,
        failure_ttl=KEEP_SECONDS,
        description=description,
    )
    log.info(
        "recovery_bulk_enqueued",
        job_id=job_id,
        organization_id=actor.organization_id,
        count=len(transaction_ids),
        channel=channel,
        filters=filters,
    )
    return job_id


def load(connection: Redis, organization_id: int, job_id: str) -> Progress | None:
    """The batch's progress if it exists and belongs to the organization (None hides others')."""
    if not job_id.startswith(JOB_PREFIX):
        return None
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None
    progress = Progress.from_meta(job.get_meta(refresh=False) or {})
    if progress is None or progress.organization_id != organization_id:
        return None
    if progress.running and job.is_failed:
        # The work horse died (timeout, kill) before it could say so itself.
        progress.state = "failed"
        progress.error = progress.error or "The job stopped unexpectedly."
    return progress


def run(
    session: DbSession,
    actor: Actor,
    transaction_ids: Sequence[int],
    channel: str,
    progress: Progress,
    report: Any = None,
) -> Progress:
    """Start a recovery for each transaction, chunk by chunk; one commit per chunk.

    `report(progress)` is called after each chunk (the job saves its meta).
    Safe to run twice: a transaction whose recovery started the first time is
    refused the second time as already running, and counted so.
    """
    channels = CHANNEL_OPTIONS[channel]
    progress.state = "running"
    for offset in range(0, len(transaction_ids), CHUNK):
        chunk = list(transaction_ids[offset : offset + CHUNK])
        found = {
            t.id: t
            for t in session.scalars(
                select(Transaction).where(
                    Transaction.id.in_(chunk), Transaction.organization_id == actor.organization_id
                )
            )
        }
        to_schedule = []
        for transaction_id in chunk:
            transaction = found.get(transaction_id)
            if transaction is None:
                progress.refuse(f"#{transaction_id}", "Transaction not found.")
                continue
            try:
                with session.begin_nested():
                    started = services.start_recovery(
                        session, transaction, actor, now=utcnow(), channels=channels
                    )
            except services.RecoveryRefused as error:
                progress.refuse(transaction.transaction_ref, error.message)
                continue
            to_schedule.append(started.attempt)
            progress.started += 1
        progress.processed += len(chunk)
        session.commit()
        for attempt in to_schedule:
            jobs.schedule_next(attempt)
        if report is not None:
            report(progress)
    progress.state = "done"
    details: dict[str, Any] = {
        "requested": progress.total,
        "started": progress.started,
        "refused": progress.refused,
        "channel": channel,
    }
    if progress.filters:
        # Which filter "all matching" meant: the rows it matches change over time.
        details["filter"] = progress.filters
    audit.record(session, actor, "recovery.bulk_started", target_type="bulk_start", target_id=None, **details)
    session.commit()
    log.info(
        "recovery_bulk_done",
        organization_id=actor.organization_id,
        requested=progress.total,
        started=progress.started,
        refused=progress.refused,
    )
    return progress


@app_job
def start_many(
    organization_id: int,
    actor_label: str,
    user_id: int | None,
    ip_address: str | None,
    transaction_ids: list[int],
    channel: str,
    filters: dict[str, str] | None = None,
) -> dict[str, int]:
    """The RQ job: run the batch, saving progress in the job's meta after every chunk.

    `filters` defaults to None so jobs queued before it existed still run.
    """
    job = get_current_job()
    actor = Actor(organization_id, actor_label, user_id, ip_address)
    progress = Progress(organization_id, len(transaction_ids), channel, filters=filters or {})

    def report(current: Progress) -> None:
        if job is not None:
            job.meta.update(current.to_meta())
            job.save_meta()  # type: ignore[no-untyped-call]  # rq leaves it unannotated

    report(progress)
    try:
        run(db.session, actor, transaction_ids, channel, progress, report)
    except Exception as error:
        db.session.rollback()
        progress.state = "failed"
        progress.error = str(error) or error.__class__.__name__
        report(progress)
        log.exception("recovery_bulk_failed", organization_id=organization_id, error=progress.error)
        raise
    report(progress)
    return {"started": progress.started, "refused": progress.refused}
