"""Fixtures of the campaign tests: real SMTP and fake Twilio on loopback, a burst RQ worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from rq import Queue, Worker
from rq.job import Job

from recovery.campaigns.engine import RETRY_CARD_JOB
from recovery.queue import redis_connection
from tests.fixtures.fakes import _twilio_server, fake_twilio, providers_config, smtp_server

__all__ = ["_twilio_server", "fake_twilio", "smtp_server"]


@pytest.fixture
def app_config(smtp_server: Any, fake_twilio: Any) -> dict[str, Any]:
    return providers_config(smtp_server, fake_twilio)


class LeavesCardRetries(Worker):
    """A production worker (it forks a work horse per job) that leaves the card retry jobs unrun.

    The retry itself is the payments package's (Stripe, its own tests); here
    only its being queued, once, is under test.
    """

    def execute_job(self, job: Job, queue: Queue) -> None:
        if job.func_name == RETRY_CARD_JOB:
            return
        super().execute_job(job, queue)


@pytest.fixture
def work(app: Flask, db: Any) -> Callable[[], None]:
    """Run the queue in burst mode: sends, staff alerts; card retries stay queued, unrun."""

    def run() -> None:
        db.session.commit()  # the forked work horse must not share this process's connection
        LeavesCardRetries(["default"], connection=redis_connection(app)).work(
            burst=True, with_scheduler=False
        )

    return run
