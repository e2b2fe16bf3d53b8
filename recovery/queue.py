"""Redis and the RQ queue, created lazily from `REDIS_URL`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Flask, current_app
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

# Redis calls from a web request must fail fast rather than hang the page.
_TIMEOUTS = {"socket_connect_timeout": 2, "socket_timeout": 5}


def init_app(app: Flask) -> None:
    app.extensions["redis"] = Redis.from_url(app.config["REDIS_URL"], **_TIMEOUTS)


def redis_connection(app: Flask | None = None) -> Redis:
    return (app or current_app).extensions["redis"]  # type: ignore[no-any-return]


def get_queue(name: str = "default", app: Flask | None = None) -> Queue:
    return Queue(name, connection=redis_connection(app))


def enqueue(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Enqueue `func` on the default queue; call only after the commit that made it true."""
    return get_queue().enqueue(func, *args, **kwargs)


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
