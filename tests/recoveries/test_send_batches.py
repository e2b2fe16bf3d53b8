"""Batched sending: several due sends per job over one SMTP connection, each with a single send's guarantees.

A real aiosmtpd server on loopback that counts connections, a real Redis and
RQ's SimpleWorker in burst mode (what `flask worker` runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from rq import SimpleWorker
from rq.registry import FinishedJobRegistry

from recovery.audit import Actor
from recovery.messaging import sender
from recovery.models import (
    AttemptStatus,
    Message,
    MessageStatus,
    Organization,
    RecoveryAttempt,
    TransactionStatus,
    utcnow,
)
from recovery.queue import get_queue, redis_connection
from recovery.recoveries import claims, jobs, lifecycle, sending
from tests.fixtures.fakes import SmtpServer, _Handler, providers_config
from tests.recoveries.test_recoveries import messages, start, travel

A = AttemptStatus
M = MessageStatus


class _CountingHandler(_Handler):
    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: Any
    ) -> Any:
        session.host_name = hostname
        self.server.connections += 1  # type: ignore[attr-defined]
        return responses


class _HangUpAfterData(_CountingHandler):
    """Takes the message, then drops the connection before answering: did it go out? Unknown."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await super().handle_DATA(server, session, envelope)
        server.transport.close()
        return "250 never heard"


@pytest.fixture
def handler_class() -> type[_Handler]:
    return _CountingHandler


@pytest.fixture
def smtp(handler_class: type[_Handler]) -> Iterator[SmtpServer]:
    """The test SMTP server, also counting connections (one EHLO each)."""
    server = SmtpServer()
    server.connections = 0  # type: ignore[attr-defined]
    server.controller.handler = handler_class(server)  # read when the server starts
    server.controller.start()
    yield server
    server.controller.stop()


@pytest.fixture
def per_connection() -> int:
    return 100


@pytest.fixture
def app_config(smtp: SmtpServer, per_connection: int) -> dict[str, Any]:
    return providers_config(smtp, None) | {
        "SEND_BATCH_SIZE": 10,
        "MAIL_MESSAGES_PER_CONNECTION": per_connection,
    }


def start_many(db: Any, org: Organization, make_transaction: Callable[..., Any], count: int) -> list[int]:
    """Start `count` email recoveries; their attempt ids (the in-process worker ends the test's session)."""
    return [start(db, make_transaction(org, customer_phone=None)).id for _ in range(count)]


def get(db: Any, attempt_id: int) -> RecoveryAttempt:
    db.session.expire_all()
    attempt = db.session.get(RecoveryAttempt, attempt_id)
    assert attempt is not None
    return attempt


def email_of(db: Any, attempt_id: int) -> str:
    return str(get(db, attempt_id).transaction.customer_email)


@pytest.mark.parametrize(("per_connection", "connections"), [(100, 1), (2, 3), (1, 5)])
def test_a_batch_of_emails_shares_one_smtp_connection(
    db, org, make_transaction, smtp, rq_worker, app, per_connection, connections
):
    attempts = start_many(db, org, make_transaction, 5)
    assert get_queue().count == 5  # a job per send, as scheduled

    rq_worker(worker_class=SimpleWorker)

    assert len(smtp.received) == 5
    assert smtp.connections == connections  # type: ignore[attr-defined]
    # One job sent them all; the four others were taken off the queue unrun.
    assert FinishedJobRegistry("default", connection=redis_connection(app)).count == 1
    assert get_queue().count == 0
    for attempt_id in attempts:
        attempt = get(db, attempt_id)
        assert (attempt.step, attempt.messages_sent, attempt.status) == (1, 1, A.NOTIFIED)
        [message] = messages(db, attempt)
        assert message.status == M.SENT and message.provider_id
    # Each attempt's next send is scheduled on its own.
    assert len(claims.due_attempts(db.session, utcnow() + timedelta(days=1, minutes=1))) == 5


def test_an_attempt_stopped_after_scheduling_is_skipped_by_the_batch(
    db, org, make_transaction, smtp, rq_worker
):
    cancelled, paid, due = start_many(db, org, make_transaction, 3)
    lifecycle.cancel_recovery(db.session, get(db, cancelled), Actor.system(org.id), now=utcnow())
    db.session.commit()
    get(db, paid).transaction.transition(TransactionStatus.RECOVERED)  # as the payment webhook does
    db.session.commit()

    rq_worker(worker_class=SimpleWorker)

    assert [m["To"] for m in smtp.received] == [email_of(db, due)]
    assert messages(db, get(db, cancelled)) == [] and messages(db, get(db, paid)) == []
    assert get(db, cancelled).status == A.CANCELLED
    assert get(db, paid).status == A.COMPLETED
    assert get(db, due).step == 1


def test_a_batch_run_twice_sends_each_message_once(db, org, make_transaction, smtp, rq_worker, app):
    attempts = start_many(db, org, make_transaction, 4)
    for attempt_id in attempts:  # the same sends again under other job ids: retries, duplicates
        get_queue().enqueue(jobs.send_step, attempt_id, 0)

    rq_worker(worker_class=SimpleWorker)
    for attempt_id in attempts:
        get_queue().enqueue(jobs.send_step, attempt_id, 0)
    rq_worker(worker_class=SimpleWorker)

    assert len(smtp.received) == 4
    assert sorted(m["To"] for m in smtp.received) == sorted(email_of(db, a) for a in attempts)
    for attempt_id in attempts:
        sent = messages(db, get(db, attempt_id))
        assert [(m.step, m.channel, m.status) for m in sent] == [(0, "email", M.SENT)]
        assert get(db, attempt_id).step == 1


def test_a_transient_failure_in_a_batch_does_not_lose_the_others(db, org, make_transaction, smtp, rq_worker):
    busy = start(db, make_transaction(org, customer_email="busy@example.com", customer_phone=None)).id
    others = start_many(db, org, make_transaction, 3)
    smtp.refuse("busy@example.com", "451 4.3.0 Try again later", times=1)

    rq_worker(worker_class=SimpleWorker)

    assert len(smtp.received) == 3 and smtp.to("busy@example.com") == []
    for attempt_id in others:
        assert [m.status for m in messages(db, get(db, attempt_id))] == [M.SENT]
        assert get(db, attempt_id).step == 1
    [failed] = messages(db, get(db, busy))
    assert (failed.status, failed.tries) == (M.FAILED, 1) and "451" in (failed.error or "")
    attempt = get(db, busy)
    assert attempt.step == 0 and timedelta(0) < attempt.next_send_at - utcnow() <= timedelta(minutes=1)

    travel(db, attempt, timedelta(minutes=2))
    jobs.sweep_once(utcnow())
    rq_worker(worker_class=SimpleWorker)

    [sent] = messages(db, get(db, busy))
    assert (sent.status, sent.tries) == (M.SENT, 2)
    assert len(smtp.to("busy@example.com")) == 1 and len(smtp.received) == 4


# --- failure modes ------------------------------------------------------------------------


@pytest.mark.parametrize("handler_class", [_HangUpAfterData])
def test_a_connection_lost_after_the_message_was_handed_over_is_not_retried(
    db, org, make_transaction, smtp, rq_worker
):
    [attempt_id] = start_many(db, org, make_transaction, 1)

    rq_worker(worker_class=SimpleWorker)

    assert len(smtp.received) == 1  # the server has it
    [message] = messages(db, get(db, attempt_id))
    assert message.status == M.UNKNOWN and message.tries == 1  # never sent again, never called sent
    assert "Unknown — check the provider" in (message.error or "")
    assert "not sent again in case it was delivered" in (message.error or "")


def test_a_batch_past_its_time_sends_nothing_more_and_retries_the_rest(
    db, org, make_transaction, smtp, rq_worker, monkeypatch
):
    monkeypatch.setattr(sending, "BATCH_SENDING_SECONDS", -1)  # out of time from the start
    attempts = start_many(db, org, make_transaction, 3)

    rq_worker(worker_class=SimpleWorker)

    assert smtp.received == []
    for attempt_id in attempts:
        attempt = get(db, attempt_id)
        [message] = messages(db, attempt)
        assert message.status == M.FAILED and "ran out of time" in (message.error or "")
        assert attempt.step == 0 and attempt.next_send_at > utcnow()  # retried a minute later

    monkeypatch.setattr(sending, "BATCH_SENDING_SECONDS", 60)
    for attempt_id in attempts:
        travel(db, get(db, attempt_id), timedelta(minutes=2))
    jobs.sweep_once(utcnow())
    rq_worker(worker_class=SimpleWorker)
    assert len(smtp.received) == 3


def test_a_claim_another_run_stored_first_leaves_the_step_to_it(db, org, make_transaction, smtp, monkeypatch):
    # SQLite has no row locks: two runs can both see no message and both claim it.
    [attempt_id] = start_many(db, org, make_transaction, 1)
    attempt = get(db, attempt_id)
    other_run = Message(
        organization_id=org.id,
        attempt_id=attempt.id,
        transaction_id=attempt.transaction_id,
        step=0,
        channel="email",
        recipient=attempt.transaction.customer_email,
        status=M.SENDING,
        tries=1,
    )
    db.session.add(other_run)
    db.session.commit()
    real = sending.messages_at_steps
    monkeypatch.setattr(
        sending, "messages_at_steps", lambda session, attempts: {a.id: [] for a in attempts}
    )  # this run read before the other stored its claim

    batch = sending.send_batch(
        db.session, sender.postman(), [(attempt_id, 0)], base_url="https://recovery.example", now=utcnow()
    )

    monkeypatch.setattr(sending, "messages_at_steps", real)
    [result] = batch.results
    assert result.outcome == "in_progress"
    assert smtp.received == []
    assert get(db, attempt_id).step == 0  # the other run finishes the step
