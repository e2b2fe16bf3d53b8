"""Real network peers for the messaging tests: an SMTP server and a fake Twilio API on loopback.

Import the fixtures into a test module (`from tests.fakes import smtp_server, fake_twilio, providers_config`).
"""

from __future__ import annotations

import email
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from recovery.sandbox.harness import free_port

TWILIO_SID = "AC" + "0" * 32
TWILIO_TOKEN = "twilio-test-token"
TWILIO_FROM = "+15005550006"


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        refusal = self.server.refusals.get(address)
        if refusal:
            if self.server.refusal_counts.get(address, 0) > 0:
                self.server.refusal_counts[address] -= 1
                if self.server.refusal_counts[address] == 0:
                    del self.server.refusals[address]
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.server.received.append(parsed)
        self.server.raw.append(envelope.original_content or envelope.content)
        self.server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd on 127.0.0.1 that keeps every email and can refuse recipients."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[EmailMessage] = []
        self.raw: list[bytes] = []  # as it came over the wire
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refusals: dict[str, str] = {}
        self.refusal_counts: dict[str, int] = {}
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def refuse(self, address: str, reply: str, times: int = 0) -> None:
        """Answer RCPT TO `address` with `reply` (e.g. "550 5.1.1 No such user"); `times` 0 = always."""
        self.refusals[address] = reply
        if times:
            self.refusal_counts[address] = times

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.received if m["To"] == address]


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.controller.start()
    yield server
    server.controller.stop()


@dataclass
class FakeTwilio:
    """A small Twilio Messages API: records each request, answers queued errors first."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    # The texts it created, as its message list shows them.
    created: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    port: int = 0
    # Called with (sid, form) before a created message is answered: a callback that beats the answer.
    before_answer: Any = None
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, status: int, code: int, message: str = "error") -> None:
        self.errors.append((status, {"code": code, "message": message, "more_info": "", "status": status}))

    def messages(self) -> list[dict[str, Any]]:
        return [
            r["form"] for r in self.requests if r["method"] == "POST" and r["path"].endswith("/Messages.json")
        ]

    def _list(self, request: Request) -> Response:
        """Twilio's message list (GET Messages.json): the texts it created, newest first, filtered."""
        to, sender = request.args.get("To"), request.args.get("From")
        after = request.args.get("DateSent>")
        since = datetime.fromisoformat(after.replace("Z", "+00:00")) if after else None
        found = [
            record
            for record in reversed(self.created)
            if (to is None or record["to"] == to)
            and (sender is None or record["from"] == sender)
            and (since is None or record["_sent_at"] >= since)
        ]
        page = [{k: v for k, v in record.items() if not k.startswith("_")} for record in found[:50]]
        body = {
            "messages": page,
            "end": len(page) - 1,
            "first_page_uri": request.full_path,
            "next_page_uri": None,
            "page": 0,
            "page_size": 50,
            "previous_page_uri": None,
            "start": 0,
            "uri": request.full_path,
        }
        return Response(json.dumps(body), status=200, mimetype="application/json")

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "form": request.form.to_dict(),
                "auth": (request.authorization.username if request.authorization else None),
            }
        )
        if request.method == "GET" and request.path.endswith("/Messages.json"):
            return self._list(request)(environ, start_response)
        if self.errors:
            status, body = self.errors.pop(0)
            response = Response(json.dumps(body), status=status, mimetype="application/json")
        else:
            sid = f"SM{next(self._ids):032d}"
            body = {
                "sid": sid,
                "account_sid": TWILIO_SID,
                "to": request.form.get("To"),
                "from": request.form.get("From"),
                "body": request.form.get("Body"),
                "status": "queued",
                "direction": "outbound-api",
                "num_segments": "1",
                "date_created": format_datetime(datetime.now(UTC), usegmt=True),
            }
            self.created.append({**body, "_sent_at": datetime.now(UTC).replace(microsecond=0)})
            if self.before_answer is not None:
                self.before_answer(sid, request.form.to_dict())
            response = Response(json.dumps(body), status=201, mimetype="application/json")
        return response(environ, start_response)


@pytest.fixture(scope="session")
def _twilio_server() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    server = make_server("127.0.0.1", 0, fake, threaded=True)
    fake.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def fake_twilio(_twilio_server: FakeTwilio) -> FakeTwilio:
    """The fake Twilio API, with no requests recorded and no errors queued."""
    _twilio_server.requests.clear()
    _twilio_server.errors.clear()
    _twilio_server.created.clear()
    _twilio_server.before_answer = None
    return _twilio_server


def providers_config(smtp: SmtpServer | None, twilio: FakeTwilio | None) -> dict[str, Any]:
    """App settings that send email to `smtp` and SMS to `twilio` (None: that channel's outbox)."""
    config: dict[str, Any] = {"MAIL_DEFAULT_SENDER": "Recovery <payments@recovery.example>"}
    if smtp is not None:
        config |= {"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp.port}
    if twilio is not None:
        config |= {
            "TWILIO_ACCOUNT_SID": TWILIO_SID,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "TWILIO_FROM_NUMBER": TWILIO_FROM,
            "TWILIO_API_BASE": twilio.base_url,
        }
    return config
