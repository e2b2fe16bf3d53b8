"""The one home of Redis and RQ: job ids, "already waiting", enqueue once, run at, and periodic jobs.

Jobs are named by dotted path ("recovery.recoveries.jobs.send_step"), so a
module that enqueues a job never imports the job's body, nor what the body
imports. Call the enqueueing functions after the commit that made the job
true (`recovery.unit_of_work.on_commit`).

The periodic jobs (`PERIODIC`) run in a chain of time slots: the run of a
slot has the job id `<name>-<slot start>`, so however many workers place it,
a slot runs once, and it places the next slot's run before it works, so an
error, a timeout or a killed worker does not end the chain. Every worker with
the scheduler checks the chains every WORKER_CHECK_SECONDS (`arm_periodic`,
from recovery/worker.py) and starts again any that Redis lost.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, get_current_job
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.utils import import_attribute

from recovery.config import Settings, settings
from recovery.logs import get_logger

log = get_logger("recovery.queue")

# Redis calls from a web request must fail fast rather than hang the page.
_TIMEOUTS = {"socket_connect_timeout": 2, "socket_timeout": 5}

# A job in one of these states will still run (or runs now); anything else (finished,
# failed, stopped, canceled, or gone after a Redis flush) will not.
WAITING = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.STARTED})
# A job that has not started yet, which can still be taken off.
_NOT_STARTED = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED)

# A job: its dotted path (preferred: the enqueuer need not import it) or the function.
Func = str | Callable[..., Any]


def _path(func: Func) -> str:
    """The job's dotted path, as RQ records it (a module-level function, or an `app_job` one)."""
    return func if isinstance(func, str) else f"{func.__module__}.{func.__qualname__}"


def init_app(app: Flask) -> None:
    app.extensions["redis"] = Redis.from_url(settings(app=app).redis_url, **_TIMEOUTS)


def redis_connection(app: Flask | None = None) -> Redis:
    return (app or current_app).extensions["redis"]  # type: ignore[no-any-return]


def get_queue(name: str = "default", app: Flask | None = None) -> Queue:
    return Queue(name, connection=redis_connection(app))


def job_id(prefix: str, *parts: object) -> str:
    """`prefix-part-part…`; a datetime part counts in whole seconds since the epoch."""
    words = [str(int(part.timestamp())) if isinstance(part, datetime) else str(part) for part in parts]
    return "-".join([prefix, *words])


def enqueue(func: Func, *args: Any, **kwargs: Any) -> Job:
    """Enqueue `func(*args)` on the default queue; `kwargs` are RQ's `enqueue` options."""
    return get_queue().enqueue(_path(func), *args, **kwargs)


def enqueue_once(
    func: Func,
    *args: Any,
    job_id: str,
    at: datetime | None = None,
    queue: Queue | None = None,
    **options: Any,
) -> bool:
    """Enqueue (to run at `at`, if given) unless a job of that id is queued, running or kept after its run.

    True if it enqueued. Unlike `place`, a kept run (finished, failed) also
    counts: for work asked for once per id, however often it is asked.
    """
    queue = queue or get_queue()
    try:
        if at is None:
            queue.enqueue(_path(func), *args, job_id=job_id, unique=True, **options)
        else:
            queue.enqueue_at(at, _path(func), *args, job_id=job_id, unique=True, **options)
    except DuplicateJobError:
        return False
    return True


def is_waiting(connection: Redis, job_id: str) -> bool:
    """Whether the job will still run, or runs now."""
    [status] = job_statuses(connection, [job_id])
    return status in WAITING


def place(
    func: Func,
    job_id: str,
    at: datetime,
    *args: Any,
    now: datetime,
    timeout: int | None = None,
    queue: Queue | None = None,
) -> bool:
    """Enqueue `func(*args)` under `job_id` to run at `at` (now if due); False if it is waiting already.

    An ended run of the same id (finished, failed) is replaced. Atomic: two
    callers placing the same id at once place one job.
    """
    queue = queue or get_queue()
    [status] = job_statuses(queue.connection, [job_id])
    if status in WAITING:
        return False
    if status is not None:
        _forget(queue.connection, job_id)
    try:
        if at <= now:
            queue.enqueue(_path(func), *args, job_id=job_id, unique=True, job_timeout=timeout)
        else:
            queue.enqueue_at(at, _path(func), *args, job_id=job_id, unique=True, job_timeout=timeout)
    except DuplicateJobError:
        return False  # placed by someone else a moment ago
    return True


def place_many(
    func: Func,
    jobs: Sequence[tuple[str, datetime, tuple[Any, ...]]],
    *,
    now: datetime,
    timeout: int | None = None,
    queue: Queue | None = None,
) -> int:
    """`place` for many (job id, at, args): one read and one write round trip in all; how many it placed.

    Without `place`'s atomic uniqueness check: a job placed by someone else
    between the read and the write is saved again with the same id and
    arguments, so use it for jobs that do their work once whatever runs them
    (the database decides).
    """
    if not jobs:
        return 0
    queue = queue or get_queue()
    path = _path(func)
    statuses = job_statuses(queue.connection, [job_id for job_id, _, _ in jobs])
    to_place = []
    for item, status in zip(jobs, statuses, strict=True):
        if status is not None:
            if status in WAITING:
                continue
            _forget(queue.connection, item[0])
        to_place.append(item)
    with queue.connection.pipeline() as pipe:
        pipe.multi()  # from the start: RQ's enqueue_job asks for MULTI before its first command
        for job_id, at, args in to_place:
            new = queue.create_job(path, args=args, job_id=job_id, timeout=timeout)
            if at <= now:
                queue.enqueue_job(new, pipeline=pipe)
            else:
                queue.schedule_job(new, at, pipeline=pipe)
        pipe.execute()
    return len(to_place)


def _forget(connection: Redis, job_id: str) -> None:
    """Delete an ended run of the same job id before placing it again (rare).

    A record a worker left half-written (its job hash removed as it started,
    then the worker died) must not stop every later placement; RQ cannot read
    it, so it goes.
    """
    try:
        Job.fetch(job_id, connection=connection).delete()
    except RedisError:
        raise
    except Exception:  # NoSuchJobError, or a record RQ cannot restore
        connection.delete(Job.key_for(job_id))


def remove(job_id: str | None, connection: Redis | None = None) -> bool:
    """Take a job that has not started off the queue or schedule (best effort: jobs re-check anyway)."""
    if not job_id:
        return False
    connection = connection or redis_connection()
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return False
    if job.get_status(refresh=False) in _NOT_STARTED:
        job.cancel()
        job.delete()
        return True
    return False


def discard_waiting(connection: Redis, job_ids: Sequence[str]) -> int:
    """Delete the jobs among `job_ids` that wait in the queue or the schedule; return how many.

    For work another job has just done (a batch took it along): removing a
    job is cheaper than running it to find nothing to do. Only the job's hash
    goes, in one round trip for all: RQ skips an id whose job no longer
    exists when it pops it (RQ's own delete would search the queue's list for
    each id). Best effort: a job that starts in the meantime re-checks the
    database and does nothing.
    """
    statuses = job_statuses(connection, job_ids)
    waiting = [
        Job.key_for(job_id)
        for job_id, status in zip(job_ids, statuses, strict=True)
        if status in (JobStatus.QUEUED, JobStatus.SCHEDULED)
    ]
    if waiting:
        connection.delete(*waiting)
    return len(waiting)


def job_statuses(connection: Redis, job_ids: Sequence[str]) -> list[str | None]:
    """Each job's status ("queued", "finished", …; None if there is no such job), in one round trip.

    Reads only the status field: cheaper than RQ's fetch, and a record RQ could
    not restore (half-written by a worker that died) does not raise.
    """
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(Job.key_for(job_id), "status")
        return [status.decode() if status is not None else None for status in pipe.execute()]


# --- periodic jobs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Periodic:
    """A job that runs every `every(settings)` seconds, once per slot however many workers run."""

    name: str
    func: str
    every: Callable[[Settings], int]
    timeout: int | None = None
    # Run at once when a worker starts, even if the next slot's run waits: a restart is
    # when its work is likeliest overdue.
    run_at_start: bool = False

    def seconds(self) -> int:
        return max(1, self.every(settings()))

    def slot(self, now: datetime) -> datetime:
        """The start of the slot `now` falls in: every worker agrees on it."""
        seconds = self.seconds()
        return datetime.fromtimestamp(int(now.timestamp()) // seconds * seconds, tz=UTC)

    def next_slot(self, now: datetime) -> datetime:
        return datetime.fromtimestamp(self.slot(now).timestamp() + self.seconds(), tz=UTC)

    def job_id(self, slot: datetime) -> str:
        return job_id(self.name, slot)


RECOVERY_SWEEP = "recovery-sweep"
WEBHOOK_SWEEP = "stripe-webhooks-sweeper"
RECONCILIATION = "stripe-webhooks-reconciler"

PERIODIC = (
    # Sends whose job Redis lost, claims of stopped sends, stalled bulk starts.
    Periodic(RECOVERY_SWEEP, "recovery.recoveries.jobs.sweep", lambda _: 60, run_at_start=True),
    # Webhook events stored but still pending: their processing job was lost.
    Periodic(
        WEBHOOK_SWEEP,
        "recovery.webhooks.jobs.sweep_webhook_events",
        operator.attrgetter("webhook_sweep_seconds"),
    ),
    # Open Checkout Sessions re-read from Stripe, and closings lost with Redis. It re-reads
    # every stale open session, one Stripe call each; a slow run may overlap the next, which
    # locks each session and skips the ones no longer open.
    Periodic(
        RECONCILIATION,
        "recovery.webhooks.jobs.reconcile_checkout_sessions",
        lambda _: 300,
        timeout=30 * 60,
    ),
)
_BY_NAME = {job.name: job for job in PERIODIC}


def periodic(name: str) -> Periodic:
    return _BY_NAME[name]


def start_periodic(name: str, now: datetime, queue: Queue | None = None) -> bool:
    """Place this slot's run of the periodic job, to run now; False if it is waiting already."""
    job = periodic(name)
    return place(
        run_periodic, job.job_id(job.slot(now)), now, name, now=now, timeout=job.timeout, queue=queue
    )


def arm_periodic(now: datetime, queue: Queue | None = None, *, starting: bool = False) -> list[str]:
    """Start every periodic chain that has no run waiting (Redis lost it); return the names started.

    Safe to call from every worker, as often as every WORKER_CHECK_SECONDS:
    a chain whose run of this slot or the next waits is left alone, and a
    slot runs once. `starting` (a worker starting): the jobs that ask for it
    run this slot even if the next one waits. A Redis error leaves that job
    for the next check.
    """
    queue = queue or get_queue()
    started = []
    for job in PERIODIC:
        try:
            if not (starting and job.run_at_start):
                ids = [job.job_id(job.slot(now)), job.job_id(job.next_slot(now))]
                if any(status in WAITING for status in job_statuses(queue.connection, ids)):
                    continue
            if start_periodic(job.name, now, queue):
                started.append(job.name)
        except RedisError as error:
            log.warning("periodic_job_arm_failed", job=job.name, error=str(error))
    if started and not starting:
        log.warning("periodic_jobs_rearmed", jobs=started)
    return started


def run_periodic(name: str) -> Any:
    """The RQ job of every periodic job: place the next slot's run, then run the job's body.

    The next run is placed first: only `arm_periodic` starts a chain, so an
    error, a timeout or a killed worker here must not end it. A body that
    raises fails this run (RQ keeps it with its traceback); the next is placed.
    """
    job = periodic(name)
    now = datetime.now(UTC)
    at = job.next_slot(now)
    running = get_current_job()
    queue = get_queue(running.origin) if running is not None else None  # the queue it was placed on
    place(run_periodic, job.job_id(at), at, name, now=now, timeout=job.timeout, queue=queue)
    body: Callable[[], Any] = import_attribute(job.func)
    return body()
