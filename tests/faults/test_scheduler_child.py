"""A `flask worker --with-scheduler` killed with -9 takes its scheduler process with it.

RQ forks the scheduler from the worker; an orphaned one kept renewing the
scheduler lock, so no other worker's scheduler could take over. Run with -s
to see the figures.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import psutil
import pytest
from redis import Redis

from tests.faults.test_redis_outage import (  # noqa: F401 -- the fixtures are used by their names
    RedisServer,
    WorkerProcesses,
    app_config_fixture,
    postgresql_only_fixture,
    private_redis_fixture,
    wait_for,
    workers_fixture,
)

LOCK = "rq:scheduler-lock:default"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")


def scheduler_pid(redis: Redis) -> int | None:
    """The process id of the scheduler holding the lock, from its own record in Redis."""
    owner = redis.get(LOCK)
    if owner is None:
        return None
    pid = redis.hget(f"rq:scheduler:{owner.decode()}", "pid")
    return int(pid) if pid else None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_workers_scheduler_stops_and_the_next_worker_takes_the_lock(
    app: Any, workers: WorkerProcesses, private_redis: RedisServer
) -> None:
    redis = private_redis.client()
    first = workers.start()
    wait_for(
        "the first worker's scheduler", lambda: scheduler_pid(redis) in workers.children(first), timeout=30
    )
    [child] = workers.children(first)

    first.kill()  # SIGKILL: no teardown runs
    first.wait(timeout=10)
    killed_at = time.monotonic()
    child_gone = wait_for("the orphaned scheduler to stop", lambda: gone(child), timeout=5)
    lock_freed = wait_for("the scheduler lock released", lambda: redis.get(LOCK) is None, timeout=5)

    second = workers.start()
    wait_for(
        "the second worker's scheduler to hold the lock",
        lambda: scheduler_pid(redis) in workers.children(second),
        timeout=30,
    )
    taken_over = time.monotonic() - killed_at

    print(
        f"\nscheduler child: gone {child_gone:.1f} s after kill -9 of its worker, lock released after "
        f"{lock_freed:.1f} s more, the next worker's scheduler held it {taken_over:.1f} s after the kill "
        "(including that worker's start-up)"
    )
    assert second.poll() is None
