"""Fixtures shared by the recovery tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from rq import Worker

from recovery.queue import redis_connection


@pytest.fixture
def work(app: Flask, db: Any) -> Callable[[], None]:
    """A real RQ worker in burst mode: the bulk job, then the sends it scheduled."""

    def run() -> None:
        # The work horse is forked from this process: end the test's transaction first (the
        # connection goes back to the pool), or the horse would inherit it and share its socket.
        db.session.commit()
        Worker(["default"], connection=redis_connection(app)).work(burst=True, with_scheduler=False)

    return run
