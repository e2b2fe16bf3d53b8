"""SMTP over TLS verifies the server: a real aiosmtpd with a self-signed certificate on loopback.

The certificates are made at test time with the `openssl` CLI. The server
demands TLS (STARTTLS with `require_starttls`, or implicit TLS on connect)
and AUTH; it records every login and message with whether it came over TLS.
"""

from __future__ import annotations

import email
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from recovery.extensions import mail
from recovery.messaging.providers import (
    MessagingSettings,
    Outcome,
    OutgoingEmail,
    Postman,
)
from recovery.models import Provider
from stripe_sandbox.harness import free_port
from tests.conftest import missing

RELAY_USER = "relay-user"
RELAY_PASSWORD = "relay-secret"


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def _self_signed(directory: Path, name: str, subject_alt_names: str) -> Certificate:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", f"/CN={name}", "-addext", f"subjectAltName={subject_alt_names}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return Certificate(cert, key)


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Certificate]:
    if shutil.which("openssl") is None:
        missing("the openssl CLI is needed to make the test certificates")
    directory = tmp_path_factory.mktemp("certificates")
    return {
        # Valid for the address the app connects to (MAIL_SERVER = 127.0.0.1).
        "loopback": _self_signed(directory, "loopback", "DNS:localhost,IP:127.0.0.1"),
        # Trusted when its own file is the CA file, but for another name.
        "other_name": _self_signed(directory, "other_name", "DNS:relay.example"),
    }


@dataclass(frozen=True)
class Login:
    mechanism: str
    login: str
    password: str
    tls: bool


@dataclass(frozen=True)
class Received:
    message: EmailMessage
    session: Any  # aiosmtpd's per-connection Session; kept so that ids stay unique
    session_ssl: bool  # aiosmtpd sets session.ssl after STARTTLS
    transport_tls: bool  # the socket itself is TLS (STARTTLS or implicit)


def _transport_tls(server: Any) -> bool:
    return server.transport is not None and server.transport.get_extra_info("ssl_object") is not None


class TlsSmtpServer:
    """aiosmtpd on 127.0.0.1 that requires TLS and a login, and records both."""

    def __init__(self, mode: str, certificate: Certificate) -> None:
        self.mode = mode
        self.certificate = certificate
        self.port = free_port()
        self.logins: list[Login] = []
        self.received: list[Received] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate.cert, certificate.key)
        options: dict[str, Any] = {"authenticator": self.authenticate}
        if mode == "starttls":
            options |= {
                "tls_context": context,
                "require_starttls": True,
                "auth_require_tls": True,
                "auth_required": True,
            }
        else:
            # Implicit TLS: aiosmtpd's auth_require_tls only knows STARTTLS (and
            # auth_required without it warns), so the authenticator records
            # whether the login came over TLS and the tests check it.
            options |= {"ssl_context": context, "auth_require_tls": False}
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **options)

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append(Login(mechanism, login, password, _transport_tls(server)))
        return AuthResult(success=(login, password) == (RELAY_USER, RELAY_PASSWORD))

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(Received(parsed, session, session.ssl is not None, _transport_tls(server)))
        return "250 Message accepted for delivery"

    @property
    def connections(self) -> int:
        """The SMTP connections that carried messages (a session per connection)."""
        return len({id(r.session) for r in self.received})


@pytest.fixture(autouse=True)
def _no_hanging_socket() -> Iterator[None]:
    # Flask-Mail sets no SMTP timeout: a broken test fails instead of hanging.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    yield
    socket.setdefaulttimeout(previous)


@pytest.fixture(params=["starttls", "implicit"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server_certificate() -> str:
    """Which certificate the server presents; parametrize to change."""
    return "loopback"


@pytest.fixture
def trusted() -> bool:
    """Whether MAIL_SSL_CA_FILE names the server's certificate; parametrize to change."""
    return False


@pytest.fixture
def tls_smtp(
    mode: str, server_certificate: str, certificates: dict[str, Certificate]
) -> Iterator[TlsSmtpServer]:
    server = TlsSmtpServer(mode, certificates[server_certificate])
    server.controller.start()
    yield server
    server.controller.stop()


@pytest.fixture
def app_config(tls_smtp: TlsSmtpServer, trusted: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "MAIL_DEFAULT_SENDER": "Recovery <payments@recovery.example>",
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": tls_smtp.port,
        "MAIL_USE_TLS": tls_smtp.mode == "starttls",
        "MAIL_USE_SSL": tls_smtp.mode == "implicit",
        "MAIL_USERNAME": RELAY_USER,
        "MAIL_PASSWORD": RELAY_PASSWORD,
    }
    if trusted:
        config["MAIL_SSL_CA_FILE"] = str(tls_smtp.certificate.cert)
    return config


def postman(app: Any) -> Postman:
    return Postman(MessagingSettings.from_config(app.config), mail)


def outgoing_email(to: str = "customer@example.com", message_id: int = 7) -> OutgoingEmail:
    return OutgoingEmail(
        message_id=message_id,
        to=to,
        subject="Acme Shop: your payment did not go through",
        text="Pay here: https://recovery.example.com/pay/TOKEN",
        html='<a href="https://recovery.example.com/pay/TOKEN">Pay</a>',
        from_name="Acme Shop",
        reply_to=None,
        unsubscribe_url="https://recovery.example.com/pay/TOKEN/unsubscribe",
    )


def test_an_untrusted_certificate_is_refused_and_retried(app, tls_smtp: TlsSmtpServer) -> None:
    assert not app.config["MAIL_SSL_CA_FILE"]

    delivery = postman(app).send_email(outgoing_email())

    assert (delivery.outcome, delivery.provider) == (Outcome.RETRY, Provider.SMTP)
    assert delivery.error is not None
    assert delivery.error.startswith("SMTP connection: certificate verify failed"), delivery.error
    assert "self-signed certificate" in delivery.error
    # Nothing reached the server: neither the email nor the password.
    assert tls_smtp.received == []
    assert tls_smtp.logins == []


@pytest.mark.parametrize("trusted", [True])
def test_the_ca_file_lets_the_email_through_over_tls(app, tls_smtp: TlsSmtpServer) -> None:
    assert app.config["MAIL_SSL_CA_FILE"] == str(tls_smtp.certificate.cert)

    delivery = postman(app).send_email(outgoing_email())

    assert (delivery.outcome, delivery.provider) == (Outcome.SENT, Provider.SMTP), delivery.error
    [received] = tls_smtp.received
    assert received.message["To"] == "customer@example.com"
    assert received.message["Message-ID"] == delivery.provider_id
    assert received.transport_tls
    if tls_smtp.mode == "starttls":
        # aiosmtpd records the TLS session on STARTTLS only (not for implicit TLS).
        assert received.session_ssl
    [login] = tls_smtp.logins
    assert (login.login, login.password, login.tls) == (RELAY_USER, RELAY_PASSWORD, True)


@pytest.mark.parametrize(("server_certificate", "trusted"), [("other_name", True)])
def test_a_trusted_certificate_for_another_name_is_refused(app, tls_smtp: TlsSmtpServer) -> None:
    delivery = postman(app).send_email(outgoing_email())

    assert delivery.outcome == Outcome.RETRY
    assert delivery.error is not None
    assert delivery.error.startswith("SMTP connection: certificate verify failed"), delivery.error
    assert "mismatch" in delivery.error and "127.0.0.1" in delivery.error
    assert tls_smtp.received == [] and tls_smtp.logins == []


@pytest.mark.parametrize("trusted", [True])
def test_a_batch_shares_one_verified_connection(app, tls_smtp: TlsSmtpServer) -> None:
    carrier = postman(app)
    with carrier.session():
        for n in range(3):
            delivery = carrier.send_email(outgoing_email(f"c{n}@example.com", n))
            assert delivery.outcome == Outcome.SENT, delivery.error

    assert [r.message["To"] for r in tls_smtp.received] == [f"c{n}@example.com" for n in range(3)]
    assert tls_smtp.connections == 1
    assert len(tls_smtp.logins) == 1
    assert all(r.transport_tls for r in tls_smtp.received)


def test_an_unreadable_ca_file_is_a_clear_retry(app, tls_smtp: TlsSmtpServer, tmp_path: Path) -> None:
    missing_file = tmp_path / "missing.pem"
    settings = replace(MessagingSettings.from_config(app.config), mail_ssl_ca_file=str(missing_file))

    delivery = Postman(settings, mail).send_email(outgoing_email())

    assert delivery.outcome == Outcome.RETRY
    assert delivery.error is not None
    assert delivery.error.startswith(f"SMTP connection: MAIL_SSL_CA_FILE '{missing_file}'"), delivery.error
    assert tls_smtp.received == []
