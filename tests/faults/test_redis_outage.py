"""Redis stopped mid-burst of signed webhooks and started again empty, under real `flask worker`s.

Each test runs its own `redis-server` (never the shared one) and two
`flask --app wsgi worker --with-scheduler` processes on PostgreSQL; the web
side is the Flask test client on the same database and Redis. Run with -s to
see the figures.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job
from sqlalchemy import func, select

from recovery.extensions import db as _db
from recovery.models import AuditEvent, PaymentFulfilment, Transaction, TransactionStatus, WebhookEvent
from recovery.queue import PERIODIC, WAITING
from tests.conftest import base_config
from tests.fixtures import stripe_events as se

ROOT = Path(__file__).resolve().parents[2]
# The workers' settings: the webhook sweeper every 2 s for events pending 2 s (60 s in production),
# the periodic check every 2 s (30 s), and a job per event, so jobs are running when Redis dies.
WORKER_SETTINGS = {
    "STRIPE_WEBHOOK_SECRET": se.SECRET,
    "STRIPE_WEBHOOK_SWEEP_SECONDS": 2,
    "WORKER_CHECK_SECONDS": 2,
    "STRIPE_WEBHOOK_BATCH_SIZE": 1,
    "STRIPE_WEBHOOK_RETRY_SECONDS": "1,1",
    "LOG_LEVEL": "WARNING",
}


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> float:
    """Poll `check` until it is truthy; return the seconds it took, or fail after `timeout`."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(every)
    return time.monotonic() - began


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private `redis-server` without persistence: each start is an empty Redis on the same port."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for("redis-server answers", self.answers, timeout=10, every=0.05)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except RedisError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def client(self) -> Redis:
        return Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)


@pytest.fixture(name="private_redis")
def private_redis_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        subprocess.run(["redis-server", "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis.log")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


@pytest.fixture(name="postgresql_only", autouse=True)
def postgresql_only_fixture(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("fault runs use PostgreSQL: several processes share the database")


@pytest.fixture(name="app_config")
def app_config_fixture(private_redis: RedisServer) -> dict[str, Any]:
    return {"REDIS_URL": private_redis.url, **WORKER_SETTINGS}


class WorkerProcesses:
    """`flask --app wsgi worker --with-scheduler` processes, their scheduler children killed at the end."""

    def __init__(self, database_url: str, redis_url: str, log_dir: Path) -> None:
        config = base_config(database_url, redis_url, **WORKER_SETTINGS)
        self.env = {**os.environ, **{key: str(value) for key, value in config.items()}}
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.started_at: list[float] = []
        self.seen_children: set[int] = set()

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"worker-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--with-scheduler"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)
        self.started_at.append(time.monotonic())
        return process

    def children(self, process: subprocess.Popen[bytes]) -> list[int]:
        try:
            found = [child.pid for child in psutil.Process(process.pid).children()]
        except psutil.NoSuchProcess:
            return []
        self.seen_children.update(found)
        return found

    def log(self, index: int) -> str:
        return (self.log_dir / f"worker-{index}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes:
            self.children(process)
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in self.seen_children:  # an orphaned scheduler, if one outlived its worker
            with suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


@pytest.fixture(name="workers")
def workers_fixture(
    postgresql_only: None, app: Any, database_url: str, private_redis: RedisServer, tmp_path: Path
) -> Iterator[WorkerProcesses]:
    started = WorkerProcesses(database_url, private_redis.url, tmp_path)
    yield started
    started.stop()


def registered_workers(redis: RedisServer) -> int:
    try:
        return int(redis.client().scard("rq:workers"))
    except RedisError:
        return 0


def periodic_jobs_placed(redis: Redis) -> bool:
    """The send sweep, the webhook sweeper and the reconciliation each have a run waiting in Redis."""
    try:
        scheduled = redis.zrange("rq:scheduled:default", 0, -1) + redis.lrange("rq:queue:default", 0, -1)
        for job in PERIODIC:
            runs = [job_id for job_id in scheduled if job_id.decode().startswith(f"{job.name}-")]
            statuses = [redis.hget(Job.key_for(job_id.decode()), "status") for job_id in runs]
            if not any(status is not None and status.decode() in WAITING for status in statuses):
                return False
        return True
    except RedisError:
        return False


def swept_events(log: str) -> int:
    """How many events the sweeper re-enqueued, from a worker's JSON log lines."""
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return sum(int(line.get("count", 0)) for line in lines if line.get("event") == "stripe_webhook_swept")


def processed_count() -> int:
    _db.session.expire_all()
    count = _db.session.scalar(
        select(func.count()).select_from(WebhookEvent).where(WebhookEvent.status == "processed")
    )
    _db.session.rollback()
    return int(count or 0)


def test_workers_ride_out_redis_restarting_empty_mid_burst(
    client: Any, workers: WorkerProcesses, private_redis: RedisServer, make_org: Any, make_transaction: Any
) -> None:
    org = make_org()
    txns = [make_transaction(org) for _ in range(60)]
    events = [se.event("checkout.session.completed", se.checkout_session(txn)) for txn in txns]
    txn_ids = [txn.id for txn in txns]
    # Every fourth event is delivered twice (Stripe redelivers): stored once, applied once.
    deliveries = [evt for i, evt in enumerate(events) for _ in range(2 if i % 4 == 0 else 1)]
    first = [workers.start(), workers.start()]
    wait_for("both workers registered", lambda: registered_workers(private_redis) == 2, timeout=30)

    answers: list[int] = []

    def post(batch: list[dict[str, Any]], pause: float = 0.0) -> None:
        for evt in batch:
            answers.append(se.post(client, evt).status_code)
            time.sleep(pause)

    cut, back = 30, 55
    post(deliveries[:cut])  # as fast as the test client goes: the workers are busy
    private_redis.kill()
    killed_at = time.monotonic()
    post(deliveries[cut:back], pause=0.1)  # Redis down: stored, answered 200, no job
    private_redis.start()  # empty
    restarted_at = time.monotonic()
    down_seconds = restarted_at - killed_at
    post(deliveries[back:])

    placed_after = wait_for(
        "the periodic jobs placed again", lambda: periodic_jobs_placed(private_redis.client()), timeout=60
    )
    wait_for("every event processed", lambda: processed_count() == len(events), timeout=60, every=0.25)
    processed_after = time.monotonic() - restarted_at

    _db.session.expire_all()
    stored = _db.session.scalar(select(func.count()).select_from(WebhookEvent))
    processed = processed_count()
    recovered = _db.session.scalar(
        select(func.count())
        .select_from(Transaction)
        .where(Transaction.id.in_(txn_ids), Transaction.status == TransactionStatus.RECOVERED)
    )
    fulfilments = _db.session.execute(
        select(PaymentFulfilment.transaction_id, func.count()).group_by(PaymentFulfilment.transaction_id)
    ).all()
    recoveries = _db.session.execute(
        select(AuditEvent.transaction_id, func.count())
        .where(AuditEvent.action == "stripe.payment_recovered")
        .group_by(AuditEvent.transaction_id)
    ).all()
    duplicated = sum(n - 1 for _, n in fulfilments if n > 1) + sum(n - 1 for _, n in recoveries if n > 1)
    lost = len(events) - processed
    alive = [process.poll() is None for process in first]
    uptimes = [round(time.monotonic() - started, 1) for started in workers.started_at]
    backs = [workers.log(i).count('"worker_redis_back"') for i in range(len(first))]
    swept = sum(swept_events(workers.log(i)) for i in range(len(first)))
    figures = (
        f"posted {len(deliveries)} ({len(events)} events, {len(deliveries) - len(events)} redeliveries), "
        f"{len(deliveries) - back} after Redis came back, {back - cut} while it was down "
        f"({down_seconds:.1f} s); stored {stored}, processed {processed}, duplicated {duplicated}, "
        f"lost {lost}; {swept} re-enqueued by the sweeper; "
        f"transactions recovered {recovered}/{len(txns)}; periodic jobs back "
        f"{placed_after:.1f} s after Redis, every event processed {processed_after:.1f} s after; "
        f"workers alive {alive}, uptime {uptimes} s, worker_redis_back logged {backs}"
    )
    print("\nredis outage:", figures)

    assert set(answers) == {200}, figures
    assert all(alive), figures
    assert all(backs), figures
    assert stored == processed == len(events), figures
    assert recovered == len(txns) and len(fulfilments) == len(txns), figures
    assert duplicated == 0 and lost == 0, figures
    assert placed_after <= 60, figures


def test_redis_emptied_without_a_disconnect_gets_its_periodic_jobs_back(
    workers: WorkerProcesses, private_redis: RedisServer
) -> None:
    # A failover to an empty replica, or a FLUSHALL: the workers' connections never drop.
    process = workers.start()
    redis = private_redis.client()
    wait_for("the periodic jobs placed at start", lambda: periodic_jobs_placed(redis), timeout=30)

    redis.flushall()
    flushed_at = time.monotonic()
    back_after = wait_for("the periodic jobs placed again", lambda: periodic_jobs_placed(redis), timeout=60)

    print(f"\nredis emptied: periodic jobs back {back_after:.1f} s after FLUSHALL (WORKER_CHECK_SECONDS=2)")
    assert process.poll() is None
    assert back_after <= 2 * int(WORKER_SETTINGS["WORKER_CHECK_SECONDS"]) + 5, back_after
    assert time.monotonic() - flushed_at < 60
