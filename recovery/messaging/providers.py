"""Hand a rendered message to its provider and say plainly how it went.

Email goes through Flask-Mail over SMTP, text messages through the twilio SDK.
Without SMTP or Twilio credentials (the demo) a message goes to the
development outbox: it is stored exactly as it would be sent and nothing
leaves the machine. No database access here: callers record the `Delivery`.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from flask_mail import Connection, Mail
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient
from urllib3.exceptions import NewConnectionError

from recovery.logs import get_logger
from recovery.messaging.smtp import (
    OutcomeUnknown,
    VerifiedConnection,
    build_email,
    connection_error,
    reply_text,
    smtp_ssl_context,
)
from recovery.models import Provider

log = get_logger("recovery.messaging")

# Twilio error codes (https://www.twilio.com/docs/api/errors).
TWILIO_INVALID_NUMBER = 21211
TWILIO_NOT_MOBILE = 21614
TWILIO_UNSUBSCRIBED = 21610
TWILIO_TOO_MANY_REQUESTS = 20429
TWILIO_UNDELIVERABLE = frozenset({TWILIO_INVALID_NUMBER, TWILIO_NOT_MOBILE})


class Outcome:
    SENT = "sent"
    # Worth another try later: connection trouble before the message went out,
    # 4xx SMTP, Twilio 5xx or 20429.
    RETRY = "retry"
    # The address or number is refused for good: never use it again, fall back.
    UNDELIVERABLE = "undeliverable"
    # The customer unsubscribed at the provider (Twilio 21610).
    OPTED_OUT = "opted_out"
    # Refused for another reason that another try will not fix.
    FAILED = "failed"
    # The connection failed after the provider may have taken the message: not
    # sent again on a guess, and not called sent either.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Delivery:
    outcome: str
    provider: str
    provider_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class FoundSms:
    """A text as Twilio's message list has it."""

    sid: str
    status: str


class LookupUnavailable(Exception):
    """The provider cannot be asked whether it has a message."""


@dataclass(frozen=True)
class OutgoingEmail:
    message_id: int
    to: str
    subject: str
    text: str
    html: str
    from_name: str
    reply_to: str | None
    # Empty for an email to staff (password reset, invitation): no List-Unsubscribe headers.
    unsubscribe_url: str
    # Names the Message-ID's sequence: "message" (a customer's Message row) or "staff" (a StaffEmail row).
    kind: str = "message"


@dataclass(frozen=True)
class OutgoingSms:
    message_id: int
    to: str
    body: str


@dataclass(frozen=True)
class MessagingSettings:
    mail_server: str
    default_sender: str
    twilio_account_sid: str
    twilio_auth_token: str
    twilio_from_number: str
    twilio_messaging_service_sid: str
    twilio_api_base: str
    twilio_validity_seconds: int
    twilio_timeout_seconds: int
    # Where Twilio reports each SMS's delivery (recovery/recoveries/twilio_hooks.py); empty: nowhere.
    twilio_status_callback: str = ""
    # Emails over one SMTP connection before a fresh one; 1: a connection per email.
    mail_messages_per_connection: int = 100
    # A CA bundle (PEM) that replaces the system's for verifying the SMTP server; empty: the system's.
    mail_ssl_ca_file: str = ""
    # Seconds an SMTP connect or reply may take.
    mail_timeout_seconds: float = 30

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MessagingSettings:
        return cls(
            mail_server=str(config.get("MAIL_SERVER") or ""),
            default_sender=str(config.get("MAIL_DEFAULT_SENDER") or "Recovery <no-reply@localhost>"),
            twilio_account_sid=str(config.get("TWILIO_ACCOUNT_SID") or ""),
            twilio_auth_token=str(config.get("TWILIO_AUTH_TOKEN") or ""),
            twilio_from_number=str(config.get("TWILIO_FROM_NUMBER") or ""),
            twilio_messaging_service_sid=str(config.get("TWILIO_MESSAGING_SERVICE_SID") or ""),
            twilio_api_base=str(config.get("TWILIO_API_BASE") or "").rstrip("/"),
            twilio_validity_seconds=int(config.get("TWILIO_VALIDITY_SECONDS", 4 * 3600)),
            twilio_timeout_seconds=int(config.get("TWILIO_TIMEOUT_SECONDS", 10)),
            twilio_status_callback=(
                f"{str(config['BASE_URL']).rstrip('/')}/twilio/status" if config.get("BASE_URL") else ""
            ),
            mail_messages_per_connection=max(1, int(config.get("MAIL_MESSAGES_PER_CONNECTION", 100))),
            mail_ssl_ca_file=str(config.get("MAIL_SSL_CA_FILE") or ""),
            mail_timeout_seconds=max(1.0, float(config.get("MAIL_TIMEOUT_SECONDS", 30))),
        )

    @property
    def email_to_outbox(self) -> bool:
        return not self.mail_server

    @property
    def sms_to_outbox(self) -> bool:
        return not (self.twilio_account_sid and self.twilio_auth_token)

    @property
    def sender_address(self) -> str:
        return parseaddr(self.default_sender)[1] or "no-reply@localhost"


class Postman:
    """Deliver outgoing messages through the configured providers; one SMTP connection per batch.

    Inside `session()` the emails share one SMTP connection, renewed after
    `mail_messages_per_connection` of them (and after an error); outside it
    each email has its own.
    """

    def __init__(self, settings: MessagingSettings, mail: Mail | None = None) -> None:
        self.settings = settings
        self.mail = mail
        self._connection: Connection | None = None
        self._sent_on_connection = 0
        self._twilio: TwilioClient | None = None
        self._batching = False
        self._ssl_context: ssl.SSLContext | None = None
        # Why the SMTP server could not be reached in this session, if it could not.
        self._smtp_down: str | None = None

    @contextmanager
    def session(self) -> Iterator[Postman]:
        """Reuse one SMTP connection for every email sent inside the block."""
        outer, self._batching = self._batching, True
        try:
            yield self
        finally:
            self._batching = outer
            if not outer:
                self._smtp_down = None
                self._close()

    def _close(self) -> None:
        """Say goodbye to the SMTP server and let go of Twilio's pooled connections."""
        self._close_smtp()
        client, self._twilio = self._twilio, None
        if client is not None and client.http_client.session is not None:
            client.http_client.session.close()

    def _close_smtp(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.host is not None:
            try:
                connection.host.quit()
            except (smtplib.SMTPException, OSError):
                connection.host.close()

    # --- email ---

    def send_email(self, email: OutgoingEmail) -> Delivery:
        if self.settings.email_to_outbox:
            return Delivery(Outcome.SENT, Provider.OUTBOX, f"outbox-{email.message_id}")
        if not self._batching:
            with self.session():
                return self._send_email(email)
        return self._send_email(email)

    def _send_email(self, email: OutgoingEmail) -> Delivery:
        if self._smtp_down is not None:
            # The server was unreachable a moment ago in this batch: each email would
            # wait out the timeout again. Retried later with the rest.
            text = f"{self._smtp_down} (not tried again in this batch)"
            return Delivery(Outcome.RETRY, Provider.SMTP, error=text)
        message = build_email(email, self.settings)
        try:
            connection = self._smtp()
            self._sent_on_connection += 1
            connection.send(message)
        except OutcomeUnknown as error:
            self._drop_connection()
            return Delivery(
                Outcome.UNKNOWN,
                Provider.SMTP,
                error=f"Unknown — check the provider: the SMTP connection was lost after the message was"
                f" handed over ({error}); not sent again in case it was delivered",
            )
        except smtplib.SMTPRecipientsRefused as error:
            self._drop_connection()
            code, reply = next(iter(error.recipients.values()), (0, b""))
            text = f"SMTP {code}: {reply_text(reply)}"
            if 500 <= code < 600:
                return Delivery(Outcome.UNDELIVERABLE, Provider.SMTP, error=text)
            return Delivery(Outcome.RETRY, Provider.SMTP, error=text)
        except smtplib.SMTPResponseException as error:
            self._drop_connection()
            text = f"SMTP {error.smtp_code}: {reply_text(error.smtp_error)}"
            if 400 <= error.smtp_code < 500 or isinstance(error, smtplib.SMTPAuthenticationError):
                return Delivery(Outcome.RETRY, Provider.SMTP, error=text)
            return Delivery(Outcome.FAILED, Provider.SMTP, error=text)
        except (smtplib.SMTPException, OSError) as error:
            # Connection refused, dropped or timed out, or the server's certificate
            # not trusted: the server never took the message.
            self._drop_connection()
            text = f"SMTP connection: {connection_error(error)}"
            if self._batching:
                self._smtp_down = text
            return Delivery(Outcome.RETRY, Provider.SMTP, error=text)
        return Delivery(Outcome.SENT, Provider.SMTP, message.msgId)

    def _smtp(self) -> Connection:
        # Renewed before the next email, not after the last one: a failure to
        # reconnect must never be blamed on an email the server accepted.
        if (
            self._connection is not None
            and self._sent_on_connection >= self.settings.mail_messages_per_connection
        ):
            self._close_smtp()
        if self._connection is None:
            if self.mail is None:
                raise RuntimeError("Postman needs the Mail extension to send email")
            if self._ssl_context is None:
                self._ssl_context = smtp_ssl_context(self.settings)
            # Flask-Mail finds the app's mail state; our connection verifies the server.
            connection = VerifiedConnection(
                self.mail.connect().mail, self._ssl_context, self.settings.mail_timeout_seconds
            )
            connection.__enter__()
            self._connection = connection
            self._sent_on_connection = 0
        return self._connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.host is not None:
            with suppress(OSError):
                connection.host.close()

    # --- sms ---

    def send_sms(self, sms: OutgoingSms) -> Delivery:
        if self.settings.sms_to_outbox:
            return Delivery(Outcome.SENT, Provider.OUTBOX, f"outbox-{sms.message_id}")
        if not self._batching:
            with self.session():
                return self._send_sms(sms)
        return self._send_sms(sms)

    def _send_sms(self, sms: OutgoingSms) -> Delivery:
        params: dict[str, Any] = {
            "to": sms.to,
            "body": sms.body,
            # A reminder delivered hours late is worse than none.
            "validity_period": self.settings.twilio_validity_seconds,
        }
        if self.settings.twilio_messaging_service_sid:
            params["messaging_service_sid"] = self.settings.twilio_messaging_service_sid
        else:
            params["from_"] = self.settings.twilio_from_number
        if self.settings.twilio_status_callback:
            # The message id in the URL finds the message even if the report beats our own commit.
            params["status_callback"] = f"{self.settings.twilio_status_callback}?message={sms.message_id}"
        try:
            created = self._twilio_client().messages.create(**params)
        except TwilioRestException as error:
            text = f"Twilio {error.code or error.status}: {error.msg}"
            if error.code == TWILIO_UNSUBSCRIBED:
                return Delivery(Outcome.OPTED_OUT, Provider.TWILIO, error=text)
            if error.code in TWILIO_UNDELIVERABLE:
                return Delivery(Outcome.UNDELIVERABLE, Provider.TWILIO, error=text)
            if error.status >= 500 or error.status == 429 or error.code == TWILIO_TOO_MANY_REQUESTS:
                return Delivery(Outcome.RETRY, Provider.TWILIO, error=text)
            return Delivery(Outcome.FAILED, Provider.TWILIO, error=text)
        except requests.RequestException as error:
            if _never_reached_twilio(error):
                return Delivery(
                    Outcome.RETRY, Provider.TWILIO, error=f"Twilio connection: {type(error).__name__}"
                )
            return Delivery(
                Outcome.UNKNOWN,
                Provider.TWILIO,
                error=f"Unknown — check the provider: the Twilio connection failed once the request may"
                f" have been sent ({type(error).__name__}); not sent again in case it was delivered",
            )
        return Delivery(Outcome.SENT, Provider.TWILIO, str(created.sid))

    def find_sms(self, *, to: str, body: str, since: datetime) -> FoundSms | None:
        """Twilio's record of a text with exactly this body sent to `to` since `since`, if it has one.

        For a text whose worker stopped while Twilio had it. Twilio filters by
        the date it sent the text; a minute's slack covers the clocks.
        """
        if self.settings.sms_to_outbox:
            raise LookupUnavailable("texts go to the development outbox")
        params: dict[str, Any] = {"to": to, "date_sent_after": since - timedelta(minutes=1), "limit": 200}
        if not self.settings.twilio_messaging_service_sid:
            params["from_"] = self.settings.twilio_from_number
        for record in self._twilio_client().messages.list(**params):
            if record.body == body and str(record.direction or "").startswith("outbound"):
                return FoundSms(str(record.sid), str(record.status or "sent"))
        return None

    def _twilio_client(self) -> TwilioClient:
        if self._twilio is None:
            settings = self.settings
            self._twilio = TwilioClient(
                settings.twilio_account_sid,
                settings.twilio_auth_token,
                http_client=BaseUrlHttpClient(settings.twilio_api_base, settings.twilio_timeout_seconds),
            )
        return self._twilio


class BaseUrlHttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio ships no type hints
    """Twilio's HTTP client, optionally sending every request to another base URL (a local fake)."""

    def __init__(self, api_base: str, timeout: int) -> None:
        super().__init__(timeout=timeout)
        self.api_base = api_base

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if self.api_base:
            base = urlsplit(self.api_base)
            url = urlunsplit(urlsplit(url)._replace(scheme=base.scheme, netloc=base.netloc))
        return super().request(method, url, *args, **kwargs)


def _never_reached_twilio(error: requests.RequestException) -> bool:
    """Whether the request failed before it could reach Twilio, so sending it again is safe.

    Only a connection never opened qualifies: refused, name not resolved, or
    timed out while connecting. Anything later (a read timeout, a reset, a TLS
    or protocol error) may have come after Twilio queued the SMS: a second
    request would be a second SMS to the customer.
    """
    if isinstance(error, requests.ConnectTimeout):
        return True
    # requests wraps urllib3's MaxRetryError, whose reason says how the connection failed.
    cause = error.args[0] if error.args else None
    return isinstance(getattr(cause, "reason", None), NewConnectionError)
