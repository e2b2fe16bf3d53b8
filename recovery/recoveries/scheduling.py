"""RQ job ids and placement for recovery sends and the sweeper; no app context, no database.

A send job carries only ids. Its job id names the attempt, the step and the
due time, so the sweeper can tell whether the send the database expects is
already waiting in Redis, and scheduling the same send twice is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus

from recovery.queue import job_statuses

# A job in one of these states will still run; anything else (finished,
# failed, stopped, canceled, or gone after a Redis flush) will not.
WAITING = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.STARTED})
SWEEP_EVERY = timedelta(minutes=1)


def send_job_id(attempt_id: int, step: int, due: datetime) -> str:
    return f"recovery-send-{attempt_id}-{step}-{int(due.timestamp())}"


def sweep_job_id(at: datetime) -> str:
    return f"recovery-sweep-{int(at.timestamp())}"


def is_waiting(connection: Redis, job_id: str) -> bool:
    try:
        return Job.fetch(job_id, connection=connection).get_status(refresh=False) in WAITING
    except NoSuchJobError:
        return False


def place(
    queue: Queue,
    func: Callable[..., Any],
    job_id: str,
    at: datetime,
    now: datetime,
    *args: Any,
    timeout: int | None = None,
) -> bool:
    """Enqueue `func(*args)` under `job_id` to run at `at` (now if due); False if it is waiting already."""
    if is_waiting(queue.connection, job_id):
        return False
    with suppress(NoSuchJobError):
        Job.fetch(job_id, connection=queue.connection).delete()  # a finished or failed run of the same id
    try:
        if at <= now:
            queue.enqueue(func, *args, job_id=job_id, unique=True, job_timeout=timeout)
        else:
            queue.enqueue_at(at, func, *args, job_id=job_id, unique=True, job_timeout=timeout)
    except DuplicateJobError:
        return False  # placed by someone else a moment ago
    return True


def place_many(
    queue: Queue,
    func: Callable[..., Any],
    jobs: Sequence[tuple[str, datetime, tuple[Any, ...]]],
    now: datetime,
    timeout: int | None = None,
) -> int:
    """`place` for many (job id, at, args): one read and one write round trip in all; how many it placed.

    For a send batch's next steps. Without `place`'s atomic uniqueness check:
    a job placed by someone else between the read and the write is saved
    again with the same id and arguments, and the send it carries happens
    once whatever runs it (the database decides).
    """
    statuses = job_statuses(queue.connection, [job_id for job_id, _, _ in jobs])
    to_place = []
    for item, status in zip(jobs, statuses, strict=True):
        if status is not None:
            if status in WAITING:
                continue
            _forget(queue.connection, item[0])
        to_place.append(item)
    placed = 0
    with queue.connection.pipeline() as pipe:
        pipe.multi()  # from the start: RQ's enqueue_job asks for MULTI before its first command
        for job_id, at, args in to_place:
            new = queue.create_job(func, args=args, job_id=job_id, timeout=timeout)
            if at <= now:
                queue.enqueue_job(new, pipeline=pipe)
            else:
                queue.schedule_job(new, at, pipeline=pipe)
            placed += 1
        pipe.execute()
    return placed


def _forget(connection: Redis, job_id: str) -> None:
    """Delete an ended run of the same job id before placing it again (rare).

    Only the status is read first, never the whole record: a record a worker
    left half-written (its job hash removed as it started, then the worker
    died) must not stop every later placement; RQ cannot read it, so it goes.
    """
    try:
        Job.fetch(job_id, connection=connection).delete()
    except RedisError:
        raise
    except Exception:  # NoSuchJobError, or a record RQ cannot restore
        connection.delete(Job.key_for(job_id))


def remove(connection: Redis, job_id: str | None) -> bool:
    """Take a waiting job off the queue or schedule (best effort: the job re-checks anyway)."""
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return False
    if job.get_status(refresh=False) in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
        job.cancel()
        job.delete()
        return True
    return False


def next_sweep_at(now: datetime) -> datetime:
    """The start of the next whole minute: every worker agrees on it, so one sweep per minute."""
    seconds = int(now.timestamp()) // 60 * 60 + 60
    return datetime.fromtimestamp(seconds, tz=UTC)
