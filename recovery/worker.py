"""The RQ workers `flask worker` runs: RQ's, riding out Redis outages and keeping our periodic jobs placed.

The periodic jobs themselves are `recovery.queue.PERIODIC`; the workers with
the scheduler check their chains (`recovery.queue.arm_periodic`).

RQ 3.0's work loop quits on any Redis error outside its dequeue (the heartbeat
after a job, the job's end bookkeeping, maintenance), and its scheduler
process dies on the first one. Our workers end that run of the loop instead,
wait for Redis with capped backoff, register afresh and work on; the periodic
jobs and the scheduler are checked every `check_every` seconds, so Redis
coming back empty costs at most that long. Every job is safe to run twice
(the database decides), so a job whose end bookkeeping was lost may run again.
"""

# RQ leaves most of BaseWorker and RQScheduler unannotated; this module calls them throughout.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import ctypes
import multiprocessing
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker, Worker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.worker import BaseWorker

from recovery import queue as jobs_queue
from recovery.logs import get_logger

log = get_logger("recovery.worker")

# What a lost or restarting Redis raises; any other error is a bug and ends the worker as RQ does.
REDIS_LOST = (RedisConnectionError, RedisTimeoutError)
# Backoff while Redis is away: 0.5 s doubling to 10 s, each wait shortened by up to half at random
# so that many workers do not knock at once.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MOST_SECONDS = 10.0
# Linux's prctl option: the signal the kernel sends a process when its parent dies.
_PR_SET_PDEATHSIG = 1


class RedisLost(StopRequested):
    """Redis failed under RQ's work loop: end this run of the loop as a stop request would."""


def wait_for_redis(connection: Redis, error: BaseException) -> float:
    """Log the outage, ping Redis with capped, jittered backoff until it answers; return seconds down."""
    began = time.monotonic()
    log.warning("worker_redis_lost", error=str(error), error_type=type(error).__name__)
    delay, tries = BACKOFF_FIRST_SECONDS, 0
    while True:
        time.sleep(delay * random.uniform(0.5, 1.0))
        tries += 1
        try:
            connection.ping()
        except REDIS_LOST:
            delay = min(delay * 2, BACKOFF_MOST_SECONDS)
            continue
        down = time.monotonic() - began
        log.warning("worker_redis_back", down_seconds=round(down, 1), tries=tries)
        return down


def die_with_parent(parent_pid: int) -> bool:
    """Have Linux send this process SIGTERM when its parent dies; False elsewhere, or if it failed.

    If the parent is already gone, SIGTERM comes at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:  # died before the call
        os.kill(os.getpid(), signal.SIGTERM)
    return True


class MortalScheduler(RQScheduler):
    """RQ's scheduler process, which also stops when its worker is killed (even by SIGKILL).

    RQ forks it from the worker and stops it only from the worker's teardown;
    a worker killed with -9 left it running for good, renewing the scheduler
    lock that no other worker could then take. On SIGTERM it releases its lock
    within a second; killed outright, the lock expires on its own (RQ gives it
    61 s).
    """

    def work(self) -> None:
        self._install_signal_handlers()  # before asking for the signal: it must stop, not just die
        parent = multiprocessing.parent_process()
        die_with_parent(parent.pid if parent is not None and parent.pid else os.getppid())
        super().work()


class _RidesOutRedisOutages(BaseWorker):
    """Start RQ's work loop again after a Redis outage instead of quitting (not in burst mode).

    Its scheduler process (`--with-scheduler`) dies with it (MortalScheduler).
    """

    _redis_lost: BaseException | None = None

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        worked = False
        while True:
            self._redis_lost = None
            try:
                worked = super().work(burst, *args, **kwargs) or worked
            except REDIS_LOST as error:  # registering at start (before RQ's loop), or its teardown
                self._lost(error)
                self._let_go()
            if self._redis_lost is None or self._shutdown_requested_date is not None:
                return worked
            if burst:  # a burst run reports the failure, as RQ does
                raise self._redis_lost
            try:
                wait_for_redis(self.connection, self._redis_lost)
            except StopRequested:  # SIGTERM or Ctrl-C while waiting
                return worked
            self._register_again()

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        # RQ 3.0's BaseWorker._start_scheduler, line for line, with MortalScheduler: RQ takes no class.
        self.scheduler = MortalScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()
                    self.scheduler.register_death()
            else:
                self.scheduler.start()

    def _lost(self, error: BaseException) -> None:
        if self._redis_lost is None:
            self._redis_lost = error

    @contextmanager
    def _ends_the_loop_on_outage(self) -> Iterator[None]:
        try:
            yield
        except REDIS_LOST as error:
            self._lost(error)
            raise RedisLost(str(error)) from error

    # The steps RQ's loop calls; each turns a lost Redis into the end of this run of the loop.

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        with self._ends_the_loop_on_outage():
            super().heartbeat(*args, **kwargs)

    def check_for_suspension(self, burst: bool) -> None:
        with self._ends_the_loop_on_outage():
            super().check_for_suspension(burst)

    def run_maintenance_tasks(self) -> None:
        with self._ends_the_loop_on_outage():
            super().run_maintenance_tasks()

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        with self._ends_the_loop_on_outage():
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            with self._ends_the_loop_on_outage():
                super().execute_job(job, queue)
        except RedisLost:
            if self.horse_pid:  # a forked work horse still runs the job: let it end (its timeout bounds it)
                self.wait_for_horse()
                self._horse_pid = 0
            raise

    def teardown(self) -> None:
        try:
            super().teardown()
        except REDIS_LOST as error:  # recording our death needs Redis; the record expires by itself
            self._lost(error)
            self._let_go()

    def _let_go(self) -> None:
        """Stop the scheduler process and the pubsub thread, which need no Redis to stop."""
        scheduler = self.scheduler
        if scheduler is not None and scheduler._process is not None and scheduler._process.is_alive():
            self.stop_scheduler()
        if self.pubsub_thread is not None:
            self.pubsub_thread.stop()
            self.pubsub_thread.join(timeout=1)
            self.pubsub_thread = None
        if self.pubsub is not None:
            with suppress(RedisError, OSError):
                self.pubsub.close()
            self.pubsub = None

    def _register_again(self) -> None:
        """Clear what the lost run left in Redis, if Redis kept its data, so the next run starts clean."""
        self.executions.clear()
        with suppress(*REDIS_LOST):
            self.register_death()
            if self.scheduler is not None:
                self.scheduler.release_locks()  # ours only; its process has stopped


class _ArmsPeriodicJobs(BaseWorker):
    """Check every `check_every` seconds that the periodic jobs are placed and a scheduler runs.

    RQ's own maintenance (registry cleanup, restarting a dead scheduler) comes
    every 10 minutes; Redis coming back empty, or a scheduler process lost with
    it, should cost less than that.
    """

    check_every: float = 30.0
    _checked_at: float | None = None
    _burst = False

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        self._burst = burst
        self._checked_at = None  # check at once: after an outage Redis may have come back empty
        return super().work(burst, *args, **kwargs)

    @property
    def should_run_maintenance_tasks(self) -> bool:
        due = self._checked_at is None or time.monotonic() - self._checked_at >= self.check_every
        return due or bool(super().should_run_maintenance_tasks)

    def run_maintenance_tasks(self) -> None:
        if super().should_run_maintenance_tasks:
            super().run_maintenance_tasks()
        self._checked_at = time.monotonic()
        jobs_queue.arm_periodic(datetime.now(UTC), self.queues[0])
        scheduler = self.scheduler
        if scheduler is not None and not self._burst:
            process = scheduler._process
            if process is None or not process.is_alive():
                # Died with a Redis outage, or another worker held the lock: take it if it is free.
                scheduler.acquire_locks(auto_start=True)


class ArmingWorker(_RidesOutRedisOutages, _ArmsPeriodicJobs, Worker):
    """RQ's forking worker, riding out Redis outages and keeping the periodic jobs placed."""


class ArmingSimpleWorker(_RidesOutRedisOutages, _ArmsPeriodicJobs, SimpleWorker):
    """RQ's in-process worker, riding out Redis outages and keeping the periodic jobs placed."""


class SteadyWorker(_RidesOutRedisOutages, Worker):
    """RQ's forking worker, riding out Redis outages."""


class SteadySimpleWorker(_RidesOutRedisOutages, SimpleWorker):
    """RQ's in-process worker, riding out Redis outages."""


def make_worker(
    queues: list[str], connection: Redis, *, fork: bool, with_scheduler: bool, check_every: int
) -> BaseWorker:
    """The worker `flask worker` runs; with the scheduler it also keeps the periodic jobs placed.

    An idle worker waits at most `check_every` seconds for a job before it
    checks again (RQ's default, 405 s, would put off the periodic check).
    """
    cls: type[BaseWorker]
    if with_scheduler:
        cls = ArmingWorker if fork else ArmingSimpleWorker
    else:
        cls = SteadyWorker if fork else SteadySimpleWorker
    # RQ waits worker_ttl - 15 seconds for a job and lets the worker's record live worker_ttl + 60.
    worker = cls(queues, connection=connection, worker_ttl=max(1, check_every) + 15)
    if isinstance(worker, _ArmsPeriodicJobs):
        worker.check_every = check_every
    return worker


def wait_until_redis_answers(connection: Redis) -> None:
    """Return once Redis answers a ping, waiting out an outage (a worker started while Redis is down)."""
    try:
        connection.ping()
    except REDIS_LOST as error:
        wait_for_redis(connection, error)
