"""A stalled SMTP server costs a send worker MAIL_TIMEOUT_SECONDS, not for ever.

The server is a real listening socket that accepts the connection and never
says a word: smtplib, left to itself, would wait for the greeting indefinitely.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from recovery.extensions import mail
from recovery.messaging.providers import MessagingSettings, Outcome, Postman
from tests.messaging.test_smtp_tls import outgoing_email


@pytest.fixture
def silent_server() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))  # the kernel completes connections; nobody answers
    yield listener.getsockname()[1]
    listener.close()


@pytest.fixture
def app_config(silent_server: int) -> dict[str, Any]:
    return {"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": silent_server, "MAIL_TIMEOUT_SECONDS": 1}


def test_a_server_that_never_greets_is_a_retry_after_the_timeout(app: Any) -> None:
    postman = Postman(MessagingSettings.from_config(app.config), mail)
    began = time.monotonic()
    delivery = postman.send_email(outgoing_email())
    waited = time.monotonic() - began

    assert delivery.outcome == Outcome.RETRY
    assert delivery.error is not None and "timed out" in delivery.error, delivery.error
    assert 0.9 <= waited < 5


def test_after_a_connection_failure_the_batch_stops_dialling(app: Any) -> None:
    postman = Postman(MessagingSettings.from_config(app.config), mail)

    with postman.session():
        first = postman.send_email(outgoing_email(message_id=1))
        began = time.monotonic()
        second = postman.send_email(outgoing_email(message_id=2))
        waited = time.monotonic() - began

    assert first.outcome == second.outcome == Outcome.RETRY
    assert second.error == f"{first.error} (not tried again in this batch)"
    assert waited < 0.5  # not another timeout
    # A new batch tries the server again.
    with postman.session():
        assert "not tried again" not in (postman.send_email(outgoing_email(message_id=3)).error or "")


def test_the_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from recovery.config import load

    monkeypatch.setenv("APP_ENV", "testing")
    monkeypatch.setenv("MAIL_TIMEOUT_SECONDS", "7")
    monkeypatch.setenv("MAIL_USE_SSL", "true")
    config = load(str(tmp_path))

    assert MessagingSettings.from_config(config).mail_timeout_seconds == 7
    assert config["MAIL_USE_SSL"] is True
