"""Fault runs for sending: a real `flask worker` SIGKILLed mid-batch, and the SMTP server stopped mid-batch.

The worker is a subprocess running the production command line; the provider
is a real aiosmtpd server on loopback that kills the worker itself at a chosen
SMTP command of a chosen email, so the crash lands exactly mid-batch. The
minutes a real run would wait (CLAIM_ABANDONED, HANDOFF_ABANDONED, the retry
delay) are stood in for by moving the rows' times back, and the sweeper's
body (`jobs.sweep_once`) is run where the scheduler would run it each minute.
Each test prints its figures: sent, reached the SMTP server, duplicated, lost, unknown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from recovery.models import Message, MessageStatus, Organization, RecoveryAttempt, Transaction, utcnow
from recovery.recoveries import answers, handoff, jobs
from tests.conftest import base_config
from tests.fixtures.fakes import SmtpServer, _Handler, providers_config
from tests.recoveries.test_recoveries import start

M = MessageStatus
ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS = 100
BATCH = 50  # SEND_BATCH_SIZE
KILL_AT_EMAIL = 31  # mid-way through the first batch


@pytest.fixture(autouse=True)
def postgresql_only(database_url: str) -> None:
    # The fault suite runs on PostgreSQL, as production does; SQLite's single
    # writer is covered by the unit tests of the same rules (tests/recoveries/test_recoveries.py).
    if not database_url.startswith("postgresql"):
        pytest.skip("fault runs use PostgreSQL")


class _KillingHandler(_Handler):
    """Keeps every email, and kills the armed worker at one SMTP command of the n-th email."""

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        self.server.strike("MAIL")  # type: ignore[attr-defined]
        envelope.mail_from = address  # a MAIL hook must fill the envelope itself
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = await super().handle_DATA(server, session, envelope)  # the server has the email now
        self.server.strike("DATA")  # type: ignore[attr-defined]
        return answer  # written to a dead peer: the worker never reads the 250


class KillingSmtp(SmtpServer):
    """An SMTP server that SIGKILLs `victim` (once) at the `kill_at` command of email number `kill_on`."""

    def __init__(self, kill_at: str, kill_on: int) -> None:
        super().__init__()
        self.kill_at, self.kill_on = kill_at, kill_on
        self.seen = Counter[str]()
        self.victim: int | None = None
        self.killed: list[int] = []
        self.controller.handler = _KillingHandler(self)

    def strike(self, command: str) -> None:
        self.seen[command] += 1
        if command != self.kill_at or self.seen[command] != self.kill_on or self.victim is None:
            return
        pid, self.victim = self.victim, None
        self.killed.append(pid)
        os.kill(pid, signal.SIGKILL)
        # Answer only once the worker is gone, so it can never read the reply.
        with suppress(ChildProcessError):
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


class _StoppingHandler(_Handler):
    """Accepts `stop_after` emails; then answers 421 and stops listening, as a server going down."""

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        smtp: StoppingSmtp = self.server  # type: ignore[assignment]
        if len(smtp.received) >= smtp.stop_after and smtp.up:
            smtp.up = False
            smtp.controller.loop.call_soon(smtp.close_listener)
        if not smtp.up:
            return "421 4.3.2 Service shutting down"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"


class StoppingSmtp(SmtpServer):
    def __init__(self, stop_after: int) -> None:
        super().__init__()
        self.stop_after = stop_after
        self.up = True
        self.controller.handler = _StoppingHandler(self)

    def close_listener(self) -> None:
        """Stop accepting connections (the server is down); the open session ends with the 421."""
        server = getattr(self.controller, "server", None)
        if server is not None:
            server.close()

    def restart(self) -> None:
        """Start again on the same port, keeping what it received."""
        with suppress(Exception):
            self.controller.stop()
        self.up = True
        self.stop_after = 10**9
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
        self.controller.start()


@pytest.fixture
def smtp(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    server: SmtpServer = request.param() if hasattr(request, "param") else SmtpServer()
    server.controller.start()
    yield server
    with suppress(Exception):
        server.controller.stop()


@pytest.fixture
def app_config(smtp: SmtpServer) -> dict[str, Any]:
    return {**providers_config(smtp, None), "SEND_BATCH_SIZE": BATCH}


WorkerRun = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def flask_worker(database_url: str, redis_url: str, smtp: SmtpServer, db: Any, tmp_path: Path) -> WorkerRun:
    """Run `flask worker --burst --without-scheduler` as a subprocess, as production does (at most 120 s)."""
    settings = base_config(database_url, redis_url, **providers_config(smtp, None), SEND_BATCH_SIZE=BATCH)
    env = {**os.environ, **{key: str(value) for key, value in settings.items()}}
    runs: list[int] = []

    def run(armed: bool = False) -> subprocess.Popen[bytes]:
        db.session.rollback()  # hold no transaction while the worker writes
        log = tmp_path / f"worker-{len(runs) + 1}.log"
        runs.append(1)
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--burst", "--without-scheduler"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            if armed:
                smtp.victim = process.pid  # type: ignore[attr-defined]
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(
                    f"the worker did not finish in 120 s; log:\n{log.read_text(errors='replace')[-3000:]}"
                )
        expected = -signal.SIGKILL if armed else 0
        assert process.returncode == expected, log.read_text(errors="replace")[-3000:]
        return process

    return run


def _start_all(db: Any, org: Organization, make_transaction: Callable[..., Any]) -> dict[int, str]:
    """Start CUSTOMERS email recoveries (each enqueues its first send); attempt id → customer email."""
    started = {}
    for number in range(CUSTOMERS):
        transaction = make_transaction(
            org, customer_email=f"customer{number}@example.com", customer_phone=None
        )
        started[start(db, transaction).id] = str(transaction.customer_email)
    return started


def _age(db: Any, by: timedelta) -> None:
    """Stand-in for waiting: every claim, hand-off and due time moves `by` into the past."""
    db.session.expire_all()
    for message in db.session.scalars(select(Message)):
        message.updated_at -= by
        if message.handed_off_at is not None:
            message.handed_off_at -= by
    for attempt in db.session.scalars(select(RecoveryAttempt)):
        if attempt.next_send_at is not None and attempt.next_send_at <= utcnow() + timedelta(minutes=5):
            attempt.next_send_at -= by
    db.session.commit()


def _first_messages(db: Any) -> dict[str, Message]:
    db.session.expire_all()
    rows = db.session.execute(
        select(Message, Transaction.customer_email)
        .join(Transaction, Transaction.id == Message.transaction_id)
        .where(Message.step == 0)
    ).all()
    return {str(email): message for message, email in rows}


def _figures(smtp: SmtpServer, emails: dict[int, str], db: Any) -> dict[str, int]:
    received = Counter(str(message["To"]) for message in smtp.received)
    messages = _first_messages(db)
    statuses = Counter(message.status for message in messages.values())
    return {
        "customers": len(emails),
        "marked_sent": statuses[M.SENT] + statuses[M.DELIVERED],
        "reached_smtp": len(received),
        "duplicated": sum(count - 1 for count in received.values() if count > 1),
        "lost": sum(
            1
            for email in emails.values()
            if received[email] == 0 and (email not in messages or messages[email].status != M.UNKNOWN)
        ),
        "unknown": statuses[M.UNKNOWN],
        "sent_but_not_at_smtp": sum(
            1 for email, m in messages.items() if m.status in (M.SENT, M.DELIVERED) and received[email] == 0
        ),
    }


@pytest.mark.parametrize("smtp", [lambda: KillingSmtp("MAIL", KILL_AT_EMAIL)], indirect=True, ids=["MAIL"])
def test_a_worker_killed_mid_batch_loses_nothing_and_calls_nothing_sent_that_was_not(
    db, org, make_transaction, smtp, flask_worker
):
    _killed_mid_batch(db, org, make_transaction, smtp, flask_worker, "MAIL")


@pytest.mark.parametrize("smtp", [lambda: KillingSmtp("DATA", KILL_AT_EMAIL)], indirect=True, ids=["DATA"])
def test_a_worker_killed_after_the_server_took_an_email_never_sends_it_twice(
    db, org, make_transaction, smtp, flask_worker
):
    _killed_mid_batch(db, org, make_transaction, smtp, flask_worker, "DATA")


def _killed_mid_batch(db, org, make_transaction, smtp, flask_worker, kill_at: str) -> None:
    emails = _start_all(db, org, make_transaction)

    # 1. The first batch claims 50 messages and is killed during the 31st hand-off.
    flask_worker(armed=True)
    assert len(smtp.killed) == 1
    at_crash = Counter(m.status for m in _first_messages(db).values())
    handed_off = [m for m in _first_messages(db).values() if m.status == M.SENDING and m.handed_off_at]
    assert at_crash[M.SENT] == KILL_AT_EMAIL - 1  # each answer was recorded before the next hand-off
    assert len(handed_off) == 1  # only the message in flight is uncertain
    assert at_crash[M.SENDING] == BATCH - (KILL_AT_EMAIL - 1)

    # 2. A worker is back: the other queued sends go out; the dead batch's claims wait (they may be live).
    flask_worker()
    # 3. Two minutes on (CLAIM_ABANDONED): the sweeper fails the claims never handed off, they go out.
    _age(db, handoff.CLAIM_ABANDONED + timedelta(seconds=1))
    # (the in-flight one's step is placed too, and finds its claim still in the provider's hands)
    assert jobs.sweep_once(utcnow()) >= BATCH - KILL_AT_EMAIL
    flask_worker()
    # 4. Ten minutes on (HANDOFF_ABANDONED): the one in flight becomes unknown, its schedule goes on.
    _age(db, handoff.HANDOFF_ABANDONED)
    assert jobs.sweep_once(utcnow()) == 1
    flask_worker()

    figures = _figures(smtp, emails, db)
    print(f"\nkill -9 at {kill_at} of email {KILL_AT_EMAIL} of {CUSTOMERS}: {figures}")
    assert figures["duplicated"] == 0, figures
    assert figures["lost"] == 0, figures
    assert figures["unknown"] == 1, figures
    assert figures["sent_but_not_at_smtp"] == 0, figures
    # The in-flight email reached the server in DATA (the customer has it) but not in MAIL.
    assert figures["reached_smtp"] == CUSTOMERS - (1 if kill_at == "MAIL" else 0), figures
    assert figures["marked_sent"] == CUSTOMERS - 1, figures
    [unknown] = [m for m in _first_messages(db).values() if m.status == M.UNKNOWN]
    assert "Unknown — check the provider" in (unknown.error or "")
    db.session.expire_all()
    steps = Counter(a.step for a in db.session.scalars(select(RecoveryAttempt)))
    assert steps == {1: CUSTOMERS}  # every schedule moved on to its second reminder


@pytest.mark.parametrize("smtp", [lambda: StoppingSmtp(stop_after=20)], indirect=True, ids=["stops-after-20"])
def test_the_smtp_server_stopping_mid_batch_delays_messages_and_loses_none(
    db, org, make_transaction, smtp, flask_worker
):
    emails = _start_all(db, org, make_transaction)

    flask_worker()  # every batch meets the server gone after its 20th email

    first = _first_messages(db)
    waiting = [m for m in first.values() if m.status == M.FAILED]
    assert len(smtp.received) == 20
    assert len(waiting) == CUSTOMERS - 20
    assert all(m.tries == 1 for m in waiting)  # each tried once, and due again in a minute
    db.session.expire_all()
    retry_at = {a.next_send_at for a in db.session.scalars(select(RecoveryAttempt)) if a.step == 0}
    assert retry_at and min(retry_at) > utcnow()  # retried on schedule (a minute on), not at once

    smtp.restart()  # type: ignore[attr-defined]
    _age(db, answers.RETRY_DELAYS[0] + timedelta(seconds=1))
    jobs.sweep_once(utcnow())
    flask_worker()

    figures = _figures(smtp, emails, db)
    print(f"\nSMTP server stopped after 20 of {CUSTOMERS} emails and started again: {figures}")
    assert figures == {
        "customers": CUSTOMERS,
        "marked_sent": CUSTOMERS,
        "reached_smtp": CUSTOMERS,
        "duplicated": 0,
        "lost": 0,
        "unknown": 0,
        "sent_but_not_at_smtp": 0,
    }
