"""A real `flask worker` process SIGKILLed in the middle of a send: the retry sends no duplicate.

The worker is a subprocess running the production command line; the provider
is a real aiosmtpd server on loopback that kills the worker itself at a chosen
point of the SMTP conversation. That makes the crash deterministic: with the
kill in DATA the provider has the email and the worker never learns it; with
the kill in MAIL the claim is committed but the provider has nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rq import SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from sqlalchemy import select

from recovery.models import AttemptStatus, Message, MessageStatus, Organization, RecoveryAttempt, utcnow
from recovery.queue import get_queue, redis_connection
from recovery.recoveries import jobs, scheduling, services
from tests.conftest import base_config
from tests.fakes import SmtpServer, _Handler, providers_config
from tests.test_recoveries import start

A = AttemptStatus
M = MessageStatus
ROOT = Path(__file__).resolve().parent.parent
NOTE = "worker stopped while sending"


class _KillingHandler(_Handler):
    """Keeps every email like the plain test server, and kills the armed worker at one SMTP command."""

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        self.server.strike("MAIL")  # type: ignore[attr-defined]
        envelope.mail_from = address  # a MAIL hook must fill the envelope itself
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = await super().handle_DATA(server, session, envelope)  # the provider has the email now
        self.server.strike("DATA")  # type: ignore[attr-defined]
        return answer  # written to a dead peer: the worker never reads the 250


class KillingSmtp(SmtpServer):
    """An SMTP server that SIGKILLs `victim` (once) when the client sends the `kill_at` command."""

    def __init__(self, kill_at: str) -> None:
        super().__init__()
        self.kill_at = kill_at
        self.victim: int | None = None
        self.killed: list[int] = []
        self.controller.handler = _KillingHandler(self)  # read when the server starts

    def strike(self, command: str) -> None:
        if command != self.kill_at or self.victim is None:
            return
        pid, self.victim = self.victim, None  # only the first worker dies
        self.killed.append(pid)  # before the kill: the test may see the death before this thread resumes
        os.kill(pid, signal.SIGKILL)
        # Answer only once the worker is gone, so it can never read the reply. It is
        # the test's child: wait for it to exit without reaping it (the test does that).
        with suppress(ChildProcessError):  # already reaped by the test's wait(): dead all the same
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


@pytest.fixture(params=["DATA", "MAIL"])
def kill_at(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def smtp(kill_at: str) -> Iterator[KillingSmtp]:
    server = KillingSmtp(kill_at)
    server.controller.start()
    yield server
    server.controller.stop()


@pytest.fixture
def app_config(smtp: KillingSmtp) -> dict[str, Any]:
    return providers_config(smtp, None)


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    return make_org(name="Acme Shop")


WorkerRun = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def flask_worker(
    database_url: str, redis_url: str, smtp: KillingSmtp, db: Any, tmp_path: Path
) -> Iterator[WorkerRun]:
    """Start `flask worker --burst --without-scheduler` as a subprocess, as production runs it.

    `armed=True` hands its pid to the SMTP server, which kills it. Returns the
    finished process; its output is in tmp_path/worker-<n>.log.
    """
    settings = base_config(database_url, redis_url, **providers_config(smtp, None))
    env = {**os.environ, **{key: str(value) for key, value in settings.items()}}
    started: list[subprocess.Popen[bytes]] = []

    def run(armed: bool = False) -> subprocess.Popen[bytes]:
        db.session.rollback()  # hold no transaction (nor SQLite lock) while the worker writes
        log = tmp_path / f"worker-{len(started) + 1}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--burst", "--without-scheduler"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            started.append(process)
            if armed:
                smtp.victim = process.pid
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"the worker did not finish in 60 s; log:\n{log.read_text(errors='replace')}")
        smtp.victim = None
        expected = -signal.SIGKILL if armed else 0
        assert process.returncode == expected, log.read_text(errors="replace")[-3000:]
        return process

    yield run
    for process in started:  # only if a failed assertion left one running
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def in_process_worker(app: Any) -> Callable[[], None]:
    """RQ's SimpleWorker (what `flask worker` runs) in the test process: for the cheap runs."""

    def run() -> None:
        SimpleWorker(["default"], connection=redis_connection(app)).work(burst=True, with_scheduler=False)

    return run


def step_messages(db: Any, attempt_id: int) -> list[Message]:
    db.session.expire_all()
    query = select(Message).where(Message.attempt_id == attempt_id).order_by(Message.id)
    return list(db.session.scalars(query))


def only_message(db: Any, attempt_id: int) -> Message:
    [message] = step_messages(db, attempt_id)
    return message


def get_attempt(db: Any, attempt_id: int) -> RecoveryAttempt:
    db.session.expire_all()
    attempt = db.session.get(RecoveryAttempt, attempt_id)
    assert attempt is not None
    return attempt


def emails_expected(kill_at: str) -> int:
    """What the provider holds after the crash, and ever after: the email only if DATA got through."""
    return 1 if kill_at == "DATA" else 0


def test_a_worker_killed_mid_send_is_not_followed_by_a_duplicate(
    db, org, make_transaction, smtp, kill_at, flask_worker, in_process_worker
):
    transaction = make_transaction(org, customer_phone=None)
    attempt = start(db, transaction)  # commits, then enqueues the first send (due now)
    # Kept aside: the in-process worker ends the test's session (app_job), detaching objects.
    attempt_id, token, customer = attempt.id, attempt.token, transaction.customer_email
    job_id = scheduling.send_job_id(attempt_id, 0, attempt.next_send_at)
    assert get_queue().job_ids == [job_id]

    # 1. The worker claims the email (commits its unique key), talks to the provider and is
    #    SIGKILLed by it: after the email was accepted (DATA) or before anything reached it (MAIL).
    flask_worker(armed=True)

    assert len(smtp.killed) == 1  # it died where planned, not of something else
    assert len(smtp.received) == emails_expected(kill_at)
    claimed = only_message(db, attempt_id)
    claimed_id, claimed_at = claimed.id, claimed.updated_at
    assert (claimed.step, claimed.channel, claimed.status, claimed.tries) == (0, "email", M.SENDING, 1)
    assert claimed.sent_at is None and claimed.provider_id is None
    assert get_attempt(db, attempt_id).step == 0
    # RQ still has the job as started, by a worker that no longer exists; the sweeper
    # trusts a started job to finish, so it does not enqueue the send again yet.
    assert Job.fetch(job_id, connection=redis_connection()).get_status() == JobStatus.STARTED
    assert jobs.sweep_once(utcnow()) == 0

    # 2. A few minutes pass. Stand-in for the wait: RQ's registry maintenance, which any
    #    worker runs when it starts and every 10 minutes, finds the dead job's heartbeat
    #    expired (job timeout + 60 s = 4 min for a SimpleWorker job) and fails it as
    #    abandoned. Run here directly, with its clock 10 minutes ahead.
    StartedJobRegistry(queue=get_queue()).cleanup(timestamp=time.time() + 10 * 60)
    assert Job.fetch(job_id, connection=redis_connection()).get_status() == JobStatus.FAILED
    # The database is the source of truth: the sweeper puts the due send back on the queue...
    assert jobs.sweep_once(utcnow()) == 1
    in_process_worker()
    # ...but a claim younger than SENDING_ABANDONED may still be in a live worker's hands:
    # the run sends nothing and leaves the step alone (the next sweep tries again).
    assert Job.fetch(job_id, connection=redis_connection()).return_value() == "in_progress"
    assert len(smtp.received) == emails_expected(kill_at)
    assert only_message(db, attempt_id).status == M.SENDING
    assert get_attempt(db, attempt_id).step == 0

    # 3. SENDING_ABANDONED passes. Stand-in for the wait: the claim's updated_at is moved
    #    back past it with an SQL UPDATE (real jobs time out long before it).
    aged = claimed_at - services.SENDING_ABANDONED - timedelta(minutes=1)
    db.session.execute(
        Message.__table__.update()  # type: ignore[attr-defined]
        .where(Message.__table__.c.id == claimed_id)  # type: ignore[attr-defined]
        .values(updated_at=aged)
    )
    db.session.commit()
    assert jobs.sweep_once(utcnow()) == 1  # the last run finished: not waiting any more

    # A second `flask worker` process, not killed this time, runs the retry.
    flask_worker()

    # Whichever side of the provider the worker died on, the abandoned claim counts as sent
    # and is never sent again. After a kill in DATA that is exactly right: the customer has
    # the one email. After a kill in MAIL the customer gets no email for this step. That is
    # deliberate: from the database both crashes look the same (a claim without an answer),
    # and the product prefers a missed reminder to a duplicate one; the later steps of the
    # schedule still go out.
    assert len(smtp.received) == emails_expected(kill_at)
    if kill_at == "DATA":
        [email] = smtp.received
        assert email["To"] == customer
        assert f"/pay/{token}" in str(email.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    message = only_message(db, attempt_id)
    assert (message.id, message.status, message.tries) == (claimed_id, M.SENT, 1)
    assert NOTE in (message.error or "")
    assert message.provider_id is None  # the provider's answer was never recorded
    assert message.sent_at == aged  # the claim's time: the best guess of when it went out
    assert Job.fetch(job_id, connection=redis_connection()).return_value() == "sent"

    # The attempt moved on to its next step, and that send is scheduled.
    moved = get_attempt(db, attempt_id)
    assert (moved.step, moved.status, moved.messages_sent) == (1, A.NOTIFIED, 1)
    assert moved.next_send_at == moved.created_at + timedelta(days=moved.schedule_days[1])
    next_send_at = moved.next_send_at
    next_job = scheduling.send_job_id(attempt_id, 1, next_send_at)
    assert get_queue().scheduled_job_registry.get_job_ids() == [next_job]

    # 4. A third run, with the step-0 send enqueued once more (a duplicate or late retry):
    #    nothing more is sent and nothing changes.
    duplicate = get_queue().enqueue(jobs.send_step, attempt_id, 0)
    in_process_worker()

    assert duplicate.return_value() == "stale"
    assert len(smtp.received) == emails_expected(kill_at)
    assert [(m.id, m.status) for m in step_messages(db, attempt_id)] == [(claimed_id, M.SENT)]
    again = get_attempt(db, attempt_id)
    assert (again.step, again.messages_sent, again.next_send_at) == (1, 1, next_send_at)
    assert get_queue().scheduled_job_registry.get_job_ids() == [next_job]
    assert len(smtp.killed) == 1
