"""recovery.queue against a real Redis and real RQ workers: job ids, placing once, and the periodic chains."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from redis import Redis
from rq import SimpleWorker, Worker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

from recovery import queue
from recovery.queue import Periodic

# Job bodies the tests place, by dotted path as the app does.
RAN: list[Any] = []


def note(*args: Any) -> str:
    RAN.append(args)
    return "noted"


def boom() -> None:
    raise RuntimeError("the body failed")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # a worker killed mid-run (OOM killer, kill -9)


@pytest.fixture
def redis(app: Flask) -> Redis:
    RAN.clear()
    return queue.redis_connection(app)


def burst(redis: Redis, *, fork: bool = False) -> None:
    """A real RQ worker in burst mode that first moves due scheduled jobs to the queue."""
    cls = Worker if fork else SimpleWorker
    cls(["default"], connection=redis).work(burst=True, with_scheduler=True)


def status(redis: Redis, job_id: str) -> str | None:
    [found] = queue.job_statuses(redis, [job_id])
    return found


def test_a_job_id_counts_datetimes_in_whole_seconds() -> None:
    due = datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC)
    assert queue.job_id("recovery-send", 7, 0, due) == f"recovery-send-7-0-{int(due.timestamp())}"


def test_enqueue_takes_a_dotted_path_or_the_function(redis: Redis) -> None:
    queue.enqueue("tests.test_queue.note", 1, job_id="by-path")
    queue.enqueue(note, 2, job_id="by-function")
    burst(redis)

    assert sorted(RAN) == [(1,), (2,)]
    assert Job.fetch("by-function", connection=redis).func_name == "tests.test_queue.note"


def test_enqueue_once_also_counts_a_finished_run(redis: Redis) -> None:
    assert queue.enqueue_once("tests.test_queue.note", "a", job_id="once") is True
    assert queue.enqueue_once("tests.test_queue.note", "a", job_id="once") is False  # queued
    burst(redis)
    assert queue.enqueue_once("tests.test_queue.note", "a", job_id="once") is False  # finished, kept

    assert RAN == [("a",)]


def test_enqueue_once_at_a_time_waits_on_the_schedule(redis: Redis) -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    assert queue.enqueue_once("tests.test_queue.note", job_id="later", at=at) is True
    burst(redis)

    assert RAN == []
    assert ScheduledJobRegistry("default", connection=redis).get_job_ids() == ["later"]


def test_place_runs_now_when_due_and_later_on_the_schedule(redis: Redis) -> None:
    now = datetime.now(UTC)
    assert queue.place("tests.test_queue.note", "due", now, "due", now=now) is True
    assert queue.place("tests.test_queue.note", "later", now + timedelta(hours=1), "later", now=now) is True
    assert queue.place("tests.test_queue.note", "due", now, "due", now=now) is False  # waiting already
    assert queue.is_waiting(redis, "due") and queue.is_waiting(redis, "later")
    burst(redis)

    assert RAN == [("due",)]
    assert status(redis, "due") == JobStatus.FINISHED
    assert status(redis, "later") == JobStatus.SCHEDULED


def test_place_replaces_an_ended_run_and_a_half_written_record(redis: Redis) -> None:
    now = datetime.now(UTC)
    queue.place("tests.test_queue.note", "again", now, 1, now=now)
    burst(redis)
    # What a worker leaves when its job's record was removed as it started and it then died.
    redis.hset(Job.key_for("broken"), mapping={"status": "finished", "ended_at": "x"})

    assert queue.place("tests.test_queue.note", "again", now, 2, now=now) is True
    assert queue.place("tests.test_queue.note", "broken", now, 3, now=now) is True
    burst(redis)

    assert RAN == [(1,), (2,), (3,)]


def test_place_many_places_what_is_not_waiting_in_two_round_trips(redis: Redis) -> None:
    now = datetime.now(UTC)
    queue.place("tests.test_queue.note", "one", now, "first", now=now)
    jobs = [
        ("one", now, ("one",)),
        ("two", now - timedelta(seconds=1), ("two",)),
        ("three", now + timedelta(hours=1), ("three",)),
    ]
    commands: list[str] = []
    real = redis.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        commands.append(str(args[0]))
        return real(*args, **options)

    redis.execute_command = counting  # type: ignore[method-assign]
    try:
        placed = queue.place_many("tests.test_queue.note", jobs, now=now)
    finally:
        del redis.execute_command

    assert placed == 2
    assert commands == []  # both round trips were pipelines, no single command
    assert queue.place_many("tests.test_queue.note", jobs, now=now) == 0  # all three wait
    assert queue.place_many("tests.test_queue.note", [], now=now) == 0
    burst(redis)
    assert sorted(RAN) == [("first",), ("two",)]
    assert status(redis, "three") == JobStatus.SCHEDULED


def test_remove_takes_off_a_job_that_has_not_started(redis: Redis) -> None:
    now = datetime.now(UTC)
    queue.place("tests.test_queue.note", "waiting", now + timedelta(hours=1), now=now)
    queue.place("tests.test_queue.note", "ran", now, now=now)
    burst(redis)

    assert queue.remove("waiting") is True
    assert status(redis, "waiting") is None
    assert queue.remove("ran") is False  # ended: kept as it is
    assert queue.remove("missing") is False
    assert queue.remove(None) is False


def test_discard_waiting_deletes_only_waiting_jobs(redis: Redis) -> None:
    now = datetime.now(UTC)
    queue.place("tests.test_queue.note", "ran", now, now=now)
    burst(redis)
    queue.place("tests.test_queue.note", "queued", now, now=now)
    queue.place("tests.test_queue.note", "scheduled", now + timedelta(hours=1), now=now)

    assert queue.discard_waiting(redis, ["ran", "queued", "scheduled", "missing"]) == 2
    assert queue.job_statuses(redis, ["ran", "queued", "scheduled", "missing"]) == [
        JobStatus.FINISHED,
        None,
        None,
        None,
    ]
    burst(redis)  # RQ skips the id whose job is gone
    assert RAN == [()]


# --- periodic jobs -----------------------------------------------------------------------------


@pytest.fixture
def chain(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Replace the periodic jobs by one test job with the body given (every 60 s)."""

    def use(body: str, *, run_at_start: bool = False) -> Periodic:
        job = Periodic("test-chain", body, lambda _: 60, run_at_start=run_at_start)
        monkeypatch.setattr(queue, "PERIODIC", (job,))
        monkeypatch.setattr(queue, "_BY_NAME", {job.name: job})
        return job

    return use


def test_slots_are_whole_multiples_of_the_period(app: Flask) -> None:
    sweep = queue.periodic(queue.RECOVERY_SWEEP)
    now = datetime(2026, 1, 2, 3, 4, 59, 900_000, tzinfo=UTC)

    assert sweep.slot(now) == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert sweep.next_slot(now) == datetime(2026, 1, 2, 3, 5, tzinfo=UTC)
    assert sweep.job_id(sweep.slot(now)) == f"recovery-sweep-{int(sweep.slot(now).timestamp())}"


@pytest.mark.parametrize("app_config", [{"STRIPE_WEBHOOK_SWEEP_SECONDS": 7}])
def test_a_periodic_job_takes_its_period_from_the_settings(app: Flask) -> None:
    assert queue.periodic(queue.WEBHOOK_SWEEP).seconds() == 7
    assert queue.periodic(queue.RECONCILIATION).seconds() == 300


def test_every_periodic_job_names_a_job_that_exists(app: Flask) -> None:
    from rq.utils import import_attribute

    assert [job.name for job in queue.PERIODIC] == [
        queue.RECOVERY_SWEEP,
        queue.WEBHOOK_SWEEP,
        queue.RECONCILIATION,
    ]
    for job in queue.PERIODIC:
        assert callable(import_attribute(job.func)), job.func


def test_arming_places_each_chain_once_however_many_workers_arm(redis: Redis, chain: Any) -> None:
    job = chain("tests.test_queue.note")
    now = datetime.now(UTC)

    assert queue.arm_periodic(now) == ["test-chain"]
    assert queue.arm_periodic(now) == []  # a second worker's check
    assert queue.start_periodic("test-chain", now) is False  # this slot's run waits

    burst(redis)
    # The run placed the next slot's before it worked: the chain is armed with no run of this slot waiting.
    assert RAN == [()]
    assert queue.is_waiting(redis, job.job_id(job.next_slot(now)))
    assert queue.arm_periodic(now) == []


def test_a_worker_start_runs_a_run_at_start_job_even_if_the_next_slot_waits(redis: Redis, chain: Any) -> None:
    job = chain("tests.test_queue.note", run_at_start=True)
    now = datetime.now(UTC)
    queue.place(queue.run_periodic, job.job_id(job.next_slot(now)), job.next_slot(now), job.name, now=now)

    assert queue.arm_periodic(now) == []  # a check: the chain is armed
    assert queue.arm_periodic(now, starting=True) == ["test-chain"]  # a start: run it now as well
    burst(redis)

    assert RAN == [()]


def test_a_failing_run_is_kept_failed_and_the_chain_goes_on(redis: Redis, chain: Any) -> None:
    job = chain("tests.test_queue.boom")
    before = datetime.now(UTC)
    queue.arm_periodic(before)
    burst(redis)
    after = datetime.now(UTC)

    [failed] = FailedJobRegistry("default", connection=redis).get_job_ids()
    assert failed == job.job_id(job.slot(before))
    result = Job.fetch(failed, connection=redis).latest_result()
    assert result is not None and "the body failed" in (result.exc_string or "")
    # The minute may turn while the worker runs.
    scheduled = set(ScheduledJobRegistry("default", connection=redis).get_job_ids())
    assert {job.job_id(job.next_slot(t)) for t in (before, after)} & scheduled


def test_a_run_killed_with_its_worker_leaves_the_next_placed(redis: Redis, chain: Any) -> None:
    job = chain("tests.test_queue.die")
    before = datetime.now(UTC)
    queue.arm_periodic(before)
    burst(redis, fork=True)  # the work horse running it is killed with SIGKILL
    after = datetime.now(UTC)

    assert FailedJobRegistry("default", connection=redis).get_job_ids() == [job.job_id(job.slot(before))]
    scheduled = set(ScheduledJobRegistry("default", connection=redis).get_job_ids())
    assert {job.job_id(job.next_slot(t)) for t in (before, after)} & scheduled


def test_a_chain_redis_lost_is_armed_again_by_the_next_check(redis: Redis, chain: Any) -> None:
    job = chain("tests.test_queue.note")
    now = datetime.now(UTC)
    queue.arm_periodic(now)
    burst(redis)
    redis.flushdb()  # a FLUSHALL, or a failover to an empty replica

    assert queue.arm_periodic(now) == ["test-chain"]
    burst(redis)
    assert RAN == [(), ()]
    assert queue.is_waiting(redis, job.job_id(job.next_slot(now)))


def test_a_redis_error_leaves_a_chain_for_the_next_check(redis: Redis, chain: Any, monkeypatch: Any) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    chain("tests.test_queue.note")

    def down(*_args: Any, **_options: Any) -> Any:
        raise RedisConnectionError("Connection refused.")

    monkeypatch.setattr(queue, "job_statuses", down)
    assert queue.arm_periodic(datetime.now(UTC)) == []
    monkeypatch.undo()
    chain("tests.test_queue.note")
    assert queue.arm_periodic(datetime.now(UTC)) == ["test-chain"]


def test_the_worker_check_arms_every_periodic_job(redis: Redis) -> None:
    from recovery.worker import ArmingSimpleWorker

    before = datetime.now(UTC)
    ArmingSimpleWorker(["default"], connection=redis).work(burst=True, with_scheduler=True)
    after = datetime.now(UTC)

    scheduled = set(ScheduledJobRegistry("default", connection=redis).get_job_ids())
    for job in queue.PERIODIC:  # each ran in the burst and placed its next slot's run
        assert {job.job_id(job.next_slot(t)) for t in (before, after)} & scheduled, job.name
