"""Start recoveries for many transactions at once: a BulkStart row, worked through by an RQ job.

Each transaction goes through `rules.starting.start_by_rules` (the
organization's rules, loaded once per chunk, then `lifecycle.start_recovery`),
so every rule (one active attempt, reachable channels, excluded failure codes,
paid already) holds exactly as for one. A refusal, or a rule that holds a
failure for review or says not to recover it, is counted and listed with its
reason, never stops the batch.

The batch is either the rows checked on one page of the list (`parse_ids`) or,
like Gmail's "select all conversations that match this search", every row the
list's filter matches (`select_matching`), resolved in the request with the
list's own parsing and query, ids only.

The database is the source of truth. The request stores the selection in a
BulkStart row; once that commits, a job carrying the row's id is queued. The
job takes the next CHUNK ids after `processed`, with the row locked, and
commits the chunk's recoveries together with the row's new counts; then the
chunk's first sends are placed. So a run killed at any point loses nothing and
repeats nothing: the next run continues from `processed`. The send sweeper
queues that next run (`resume_stalled`) for a row that stopped moving.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from rq.exceptions import DuplicateJobError
from rq.job import JobStatus
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from recovery import audit
from recovery.audit import Actor
from recovery.extensions import db
from recovery.jobs import app_job
from recovery.logs import get_logger
from recovery.models import BulkStart, BulkStatus, Organization, RecoveryAttempt, Transaction, utcnow
from recovery.models.base import DbSession
from recovery.queue import get_queue, job_statuses
from recovery.recoveries.refusals import RecoveryRefused
from recovery.recoveries.schedule import send_time
from recovery.refusals import Refused
from recovery.rules.choice import CurrentVersions
from recovery.rules.services import load_rules
from recovery.rules.starting import RuleStart, start_by_rules
from recovery.transactions import services as transactions
from recovery.unit_of_work import commit_now, on_commit

log = get_logger("recovery.recoveries")

BS = BulkStatus

CHUNK = 50
# One request may ask for this many; a page of the list holds 50.
MAX_TRANSACTIONS = 5000
# A filter that matches too many is counted this far, so the refusal can say how many
# without counting a large merchant's whole history.
REFUSAL_COUNT_CAP = 100_000
# Refusals listed on the progress page; all of them are counted.
MAX_LISTED = 500
# 100 chunks of a few seconds each; a run that takes longer is stopped by RQ.
JOB_TIMEOUT = 30 * 60
JOB_PREFIX = "bulk-start-"
# A run commits a chunk every few seconds (50 starts, a few ms each). A queued or
# running bulk start untouched for this long has no live run: its worker was killed
# or its job lost with Redis. Generous, since a second run beside a slow live one
# would wait on the row's lock for nothing (and start nothing twice: see `step`).
STALLED_AFTER = timedelta(minutes=2)
# Bulk starts one sweep resumes; the next sweep, a minute later, takes the rest.
RESUME_BATCH = 100
# A job in one of these states will still run, so the sweeper leaves its bulk start alone.
# Not "started": a started run whose row stopped moving died with its worker.
_WILL_RUN = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED})

# "any": every channel each customer can be reached on (start_recovery's default).
CHANNEL_OPTIONS = {"any": None, "email": ["email"], "sms": ["sms"]}


class BulkRefused(Refused):
    """The request itself is unusable (nothing selected, too many, a bad filter)."""


@dataclass(frozen=True)
class Selection:
    """The transactions a request asks for; `filters` when they came from the list's filter."""

    ids: list[int]
    filters: dict[str, str] | None = None


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


def create(
    session: DbSession,
    actor: Actor,
    transaction_ids: list[int],
    channel: str,
    filters: dict[str, str] | None = None,
) -> BulkStart:
    """Add the bulk start with its first run counted; the run is queued once this commits."""
    if channel not in CHANNEL_OPTIONS:
        raise BulkRefused("Choose how to send: email, SMS, or both.")
    bulk = BulkStart(
        organization_id=actor.organization_id,
        user_id=actor.user_id,
        actor_label=actor.label,
        ip_address=actor.ip_address,
        transaction_ids=list(transaction_ids),
        channel=channel,
        filters=filters or {},
        status=BS.QUEUED,
        total=len(transaction_ids),
        reasons={},
        refusals=[],
        runs=1,
    )
    session.add(bulk)
    session.flush()
    log.info(
        "recovery_bulk_created",
        bulk_start_id=bulk.id,
        organization_id=actor.organization_id,
        count=len(transaction_ids),
        channel=channel,
        filters=filters,
    )
    on_commit(session, queue_run, bulk.id, bulk.runs, bulk.total)
    return bulk


def job_id(bulk: BulkStart) -> str:
    """The RQ job id of the bulk start's current run: one job per run, however often it is queued."""
    return run_job_id(bulk.id, bulk.runs)


def run_job_id(bulk_id: int, run: int) -> str:
    return f"{JOB_PREFIX}{bulk_id}-{run}"


def enqueue_run(bulk: BulkStart) -> str:
    """Queue the current run (after the commit that counted it); raises RedisError if unreachable."""
    return queue_run(bulk.id, bulk.runs, bulk.total)


def queue_run(bulk_id: int, run: int, total: int) -> str:
    """Queue run `run` of the bulk start; raises RedisError if unreachable.

    Safe to call twice: the second finds the job and adds none.
    """
    run_id = run_job_id(bulk_id, run)
    description = f"Start {total} recoveries (bulk start {bulk_id}, run {run})"
    with suppress(DuplicateJobError):  # queued already
        get_queue().enqueue(
            run_job, bulk_id, job_id=run_id, unique=True, job_timeout=JOB_TIMEOUT, description=description
        )
    return run_id


@dataclass(frozen=True)
class FirstSends:
    """When the first messages of a bulk start's recoveries go: at once, or after quiet hours.

    `quiet_end` is the organization's quiet hours' end ("08:00"), the local time
    at which a deferred first message goes in its customer's zone.
    """

    now: int = 0
    after_quiet_hours: int = 0
    quiet_end: str | None = None
    # The organization's schedule starts after day 0: the first message is not today.
    later: int = 0


def first_sends(session: DbSession, bulk: BulkStart) -> FirstSends:
    """Count the bulk start's recoveries by when their first message goes, by the sending rule itself.

    The first send is `schedule.send_time` of the attempt's start plus its
    schedule's first day (as `start_recovery` sets it); recomputed here
    because `next_send_at` moves on once that message is out.
    """
    organization = session.get(Organization, bulk.organization_id)
    done = bulk.transaction_ids[: bulk.processed]
    if organization is None or not done or not bulk.started:
        return FirstSends()
    rows = session.execute(
        select(RecoveryAttempt, Transaction)
        .join(Transaction, Transaction.id == RecoveryAttempt.transaction_id)
        .where(
            RecoveryAttempt.organization_id == bulk.organization_id,
            RecoveryAttempt.transaction_id.in_(done),
            RecoveryAttempt.created_at >= bulk.created_at,
        )
    ).all()
    now = quiet = later = 0
    for attempt, transaction in rows:
        planned = attempt.created_at + timedelta(days=(attempt.schedule_days or [0])[0])
        if planned > attempt.created_at:
            later += 1
        elif send_time(organization, transaction, planned) > planned:
            quiet += 1
        else:
            now += 1
    window = (organization.quiet_hours or "").partition("-")[2].strip() or None
    return FirstSends(now, quiet, window, later)


def get_for_org(session: DbSession, organization_id: int, bulk_id: int) -> BulkStart | None:
    """The bulk start if it belongs to the organization (None hides another's)."""
    bulk = session.get(BulkStart, bulk_id)
    return bulk if bulk is not None and bulk.organization_id == organization_id else None


def is_stalled(bulk: BulkStart, now: datetime) -> bool:
    """Whether the bulk start should be moving and has not for STALLED_AFTER (its run died)."""
    return bulk.status in (BS.QUEUED, BS.RUNNING) and bulk.updated_at < now - STALLED_AFTER


def _lock(session: DbSession, bulk_id: int) -> BulkStart | None:
    """Read the row afresh, locked until this transaction ends, so that one run at a time moves it.

    PostgreSQL: SELECT … FOR UPDATE. SQLite has no row locks and ignores FOR
    UPDATE: a write first takes the database's write lock (one writer at a
    time), so the read after it is current until the commit.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(BulkStart).where(BulkStart.id == bulk_id).values(updated_at=utcnow()))
    return session.scalar(
        select(BulkStart)
        .where(BulkStart.id == bulk_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _actor(bulk: BulkStart) -> Actor:
    return Actor(bulk.organization_id, bulk.actor_label, bulk.user_id, bulk.ip_address)


def step(session: DbSession, bulk_id: int) -> bool:
    """Start the next chunk's recoveries and commit them with the row's counts; False once nothing is left.

    Safe to run twice, and at once: the row is locked while its chunk is
    worked, and the chunk is the one after `processed` as committed. (A
    transaction started anyway would be refused by start_recovery as already
    running.) The chunk's first sends are placed after its commit (`start_recovery`
    registers them); a crash between the two leaves them to the send sweeper.
    """
    bulk = _lock(session, bulk_id)
    if bulk is None or bulk.status not in (BS.QUEUED, BS.RUNNING):
        session.rollback()  # done, failed (an operator resumes it) or gone: nothing to do
        return False
    bulk.transition(BS.RUNNING)
    chunk = bulk.transaction_ids[bulk.processed : bulk.processed + CHUNK]
    actor = _actor(bulk)
    channels = CHANNEL_OPTIONS[bulk.channel]
    found = {
        t.id: t
        for t in session.scalars(
            select(Transaction).where(
                Transaction.id.in_(chunk), Transaction.organization_id == bulk.organization_id
            )
        )
    }
    # Plain JSON columns: changes are seen by assigning new values, not by mutating.
    reasons, refusals = dict(bulk.reasons or {}), list(bulk.refusals or [])
    rules = load_rules(session, bulk.organization_id)  # once for the chunk
    versions = CurrentVersions(session)
    # Held for the chunk: each start reads its organization, and the identity map keeps it weakly.
    _organization = session.get(Organization, bulk.organization_id)
    for transaction_id in chunk:
        transaction = found.get(transaction_id)
        try:
            if transaction is None:
                raise RecoveryRefused("Transaction not found.")
            with session.begin_nested():
                started = start_by_rules(
                    session,
                    transaction,
                    actor,
                    now=utcnow(),
                    channels=channels,
                    rules=rules,
                    versions=versions,
                )
            if started.attempt is None:
                raise RecoveryRefused(_ruled_out(started))
        except RecoveryRefused as error:
            bulk.refused += 1
            reasons[error.message] = reasons.get(error.message, 0) + 1
            if len(refusals) < MAX_LISTED:
                ref = transaction.transaction_ref if transaction else f"#{transaction_id}"
                refusals.append({"ref": ref, "reason": error.message})
            continue
        bulk.started += 1
    bulk.reasons, bulk.refusals = reasons, refusals
    bulk.processed += len(chunk)
    more = bulk.processed < bulk.total
    if not more:
        _finish(session, bulk, actor)
    commit_now(session, "each chunk holds on its own: a run that dies resumes after it")
    return more


def _ruled_out(started: RuleStart) -> str:
    """The reason listed for a failure a rule held or marked (counted with the refusals; nothing started)."""
    assert started.decision is not None
    done = "Held for review" if started.outcome == "held" else "Not recovered"
    return f"{done} by rule “{started.decision.rule_name}”"


def _finish(session: DbSession, bulk: BulkStart, actor: Actor) -> None:
    bulk.transition(BS.DONE)
    bulk.finished_at = utcnow()
    details: dict[str, Any] = {
        "requested": bulk.total,
        "started": bulk.started,
        "refused": bulk.refused,
        "channel": bulk.channel,
    }
    if bulk.filters:
        # Which filter "all matching" meant: the rows it matches change over time.
        details["filter"] = bulk.filters
    audit.record(
        session, actor, "recovery.bulk_started", target_type="bulk_start", target_id=bulk.id, **details
    )
    log.info(
        "recovery_bulk_done",
        bulk_start_id=bulk.id,
        organization_id=bulk.organization_id,
        requested=bulk.total,
        started=bulk.started,
        refused=bulk.refused,
        runs=bulk.runs,
    )


def run(session: DbSession, bulk_id: int) -> None:
    """Work the bulk start through to its end, a chunk (and a commit) at a time, from where it is."""
    while step(session, bulk_id):
        pass


def _fail(session: DbSession, bulk_id: int, error: Exception) -> None:
    """Record that the run stopped on an error; an operator may resume it (`resume`)."""
    message = (str(error) or error.__class__.__name__)[:1000]
    try:
        bulk = _lock(session, bulk_id)
        if bulk is not None and bulk.can_transition(BS.FAILED):
            bulk.transition(BS.FAILED)
            bulk.error = message
        commit_now(session, "the failure is on record though the job that hit it fails")
    except SQLAlchemyError:
        # The database itself is failing: the row stays running and the sweeper resumes it.
        session.rollback()
        log.exception("recovery_bulk_fail_not_recorded", bulk_start_id=bulk_id)


@app_job
def run_job(bulk_id: int) -> None:
    """The RQ job: run the bulk start from where the database says it is.

    An error in a chunk rolls that chunk back and marks the bulk start failed
    with the message (the chunks before it stay committed); a killed worker
    leaves it running, for the sweeper to resume.
    """
    try:
        run(db.session, bulk_id)
    except Exception as error:
        db.session.rollback()
        log.exception("recovery_bulk_failed", bulk_start_id=bulk_id, error=str(error)[:300])
        _fail(db.session, bulk_id, error)
        raise  # RQ records the failed run with its traceback


@app_job
def start_many(*args: Any, **kwargs: Any) -> None:
    """A job queued by the release that kept bulk starts in RQ's meta: log it, start nothing.

    Its progress page is gone with that release; the operator sees the 404 and
    selects the transactions again.
    """
    log.warning("recovery_bulk_old_job_dropped", organization_id=args[0] if args else None)


def resume(session: DbSession, bulk: BulkStart, actor: Actor) -> None:
    """Run a failed bulk start again from its last committed chunk; queued once this commits."""
    if bulk.status != BS.FAILED:
        raise BulkRefused("Only a bulk start that stopped on an error can be resumed.")
    bulk.transition(BS.RUNNING)
    bulk.error = None
    bulk.runs += 1
    audit.record(
        session,
        actor,
        "recovery.bulk_resumed",
        target_type="bulk_start",
        target_id=bulk.id,
        processed=bulk.processed,
        total=bulk.total,
    )
    on_commit(session, queue_run, bulk.id, bulk.runs, bulk.total)


def resume_stalled(session: DbSession, now: datetime) -> int:
    """Queue a new run of each bulk start that stopped moving; return how many. Called by the sweeper.

    Stalled: queued or running, untouched for STALLED_AFTER, and its last run's
    job is not waiting in Redis (a queued one will run; a started one whose
    row stopped moving died with its worker). Counting the run and touching
    the row first means the next sweeps leave it alone for STALLED_AFTER, so
    runs do not pile up; and two runs at once would start nothing twice.
    """
    stalled = list(
        session.scalars(
            select(BulkStart)
            .where(BulkStart.status.in_((BS.QUEUED, BS.RUNNING)), BulkStart.updated_at < now - STALLED_AFTER)
            .order_by(BulkStart.updated_at)
            .limit(RESUME_BATCH)
            # A row locked by a live run is moving; PostgreSQL skips it, SQLite ignores this.
            .with_for_update(skip_locked=True)
        )
    )
    statuses = job_statuses(get_queue().connection, [job_id(bulk) for bulk in stalled]) if stalled else []
    resumed = [bulk for bulk, status in zip(stalled, statuses, strict=True) if status not in _WILL_RUN]
    for bulk in resumed:
        bulk.runs += 1
        bulk.updated_at = now
    commit_now(session, "the runs are counted before they are queued: the next sweeps leave them alone")
    placed = 0
    for bulk in resumed:
        try:
            enqueue_run(bulk)
        except RedisError:
            log.exception("recovery_bulk_resume_failed", bulk_start_id=bulk.id)
            continue  # tried again once STALLED_AFTER has passed
        placed += 1
        log.warning("recovery_bulk_resumed", bulk_start_id=bulk.id, processed=bulk.processed, runs=bulk.runs)
    return placed
