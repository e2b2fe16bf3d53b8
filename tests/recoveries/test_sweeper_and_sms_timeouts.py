"""Failures that must neither stop the send sweeper nor text a customer twice.

The sweeper runs through a real RQ worker in burst mode on a real Redis; SMS
go over real HTTP to a fake Twilio on loopback.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import RedisError
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from sqlalchemy.exc import OperationalError

from recovery.messaging.providers import MessagingSettings, Outcome, OutgoingSms, Postman
from recovery.models import utcnow
from recovery.queue import RECOVERY_SWEEP, arm_periodic, periodic, redis_connection, start_periodic
from recovery.recoveries import jobs
from stripe_sandbox.harness import free_port
from tests.fixtures.fakes import (
    TWILIO_FROM,
    TWILIO_SID,
    TWILIO_TOKEN,
    FakeTwilio,
    _twilio_server,
    fake_twilio,
)

__all__ = ["_twilio_server", "fake_twilio"]


# --- the send sweeper ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name", "error"),
    [
        (jobs, "due_attempts", OperationalError("SELECT", {}, Exception("server closed the connection"))),
        (jobs, "schedule_many", RedisError("Connection reset by peer")),
    ],
)
def test_a_failed_sweep_still_places_the_next_one(app, rq_worker, monkeypatch, module, name, error):
    def fail(*_args: Any) -> Any:
        raise error

    monkeypatch.setattr(module, name, fail)
    sweep = periodic(RECOVERY_SWEEP)
    before = utcnow()
    assert start_periodic(RECOVERY_SWEEP, before) is True
    rq_worker(with_scheduler=True)
    after = utcnow()

    redis = redis_connection(app)
    # RQ keeps the failed run and why it failed...
    [failed_id] = FailedJobRegistry("default", connection=redis).get_job_ids()
    assert failed_id == sweep.job_id(sweep.slot(before))
    result = Job.fetch(failed_id, connection=redis).latest_result()
    assert result is not None and type(error).__name__ in (result.exc_string or "")
    # ...and the chain goes on: the next minute's sweep waits (the minute may turn while the worker runs).
    expected = {sweep.job_id(sweep.next_slot(t)) for t in (before, after)}
    scheduled = ScheduledJobRegistry("default", connection=redis).get_job_ids()
    assert expected & set(scheduled)


def test_a_workers_maintenance_round_rearms_what_redis_lost(app, rq_worker):
    # A flush (or a failover to an empty replica) takes every waiting job with it;
    # the chains only re-place themselves from a run, so nothing would run again.
    from recovery.queue import PERIODIC
    from recovery.worker import ArmingSimpleWorker

    redis = redis_connection(app)
    assert arm_periodic(utcnow()) == [job.name for job in PERIODIC]
    redis.flushdb()
    before = utcnow()

    # RQ runs its maintenance when a worker starts and every 10 minutes after.
    rq_worker(with_scheduler=True, worker_class=ArmingSimpleWorker)

    after = utcnow()
    scheduled = set(ScheduledJobRegistry("default", connection=redis).get_job_ids())
    # Each re-armed job ran in the burst and placed its next slot's run.
    for job in PERIODIC:
        assert {job.job_id(job.next_slot(t)) for t in (before, after)} & scheduled, job.name
    assert arm_periodic(utcnow()) == []  # armed: a second round adds nothing


# --- SMS whose request may have reached Twilio ---------------------------------------------


def twilio_postman(api_base: str) -> Postman:
    """A postman that texts through the Twilio API at `api_base`, waiting at most a second for it."""
    config = {
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_FROM_NUMBER": TWILIO_FROM,
        "TWILIO_API_BASE": api_base,
        "TWILIO_TIMEOUT_SECONDS": 1,
    }
    return Postman(MessagingSettings.from_config(config))


def text(api_base: str) -> Any:
    return twilio_postman(api_base).send_sms(OutgoingSms(1, "+14155550123", "Acme: pay $50.00"))


def test_twilio_not_listening_is_retried() -> None:
    delivery = text(f"http://127.0.0.1:{free_port()}")

    assert delivery.outcome == Outcome.RETRY
    assert delivery.error == "Twilio connection: ConnectionError"


def test_twilio_answering_too_late_is_not_sent_again(fake_twilio: FakeTwilio) -> None:
    client_gave_up = threading.Event()
    # Twilio has taken the message; its answer comes only after the client stopped waiting.
    fake_twilio.before_answer = lambda _sid, _form: client_gave_up.wait(10)

    delivery = text(fake_twilio.base_url)
    client_gave_up.set()

    assert len(fake_twilio.messages()) == 1
    assert delivery.outcome == Outcome.UNKNOWN
    assert delivery.error is not None and "ReadTimeout" in delivery.error
    assert delivery.error.endswith("not sent again in case it was delivered")


@pytest.fixture
def twilio_that_hangs_up() -> Iterator[tuple[str, list[bytes]]]:
    """A server that reads one request, then closes the connection without an answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            received.append(connection.recv(65536))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", received
    thread.join(timeout=5)
    listener.close()


def test_twilio_hanging_up_after_the_request_is_not_sent_again(twilio_that_hangs_up) -> None:
    api_base, received = twilio_that_hangs_up

    delivery = text(api_base)

    [request] = received
    assert request.startswith(f"POST /2010-04-01/Accounts/{TWILIO_SID}/Messages.json ".encode())
    assert delivery.outcome == Outcome.UNKNOWN
    assert delivery.error is not None and "ConnectionError" in delivery.error
