"""Email over SMTP: the message as it goes on the wire, and connections that verify the server.

Flask-Mail does the SMTP conversation; this module fixes what it gets wrong
for us (header folding, unverified TLS) and tells apart a failure after the
server may have taken the message (`OutcomeUnknown`) from one before.
"""

from __future__ import annotations

import email.policy
import functools
import smtplib
import ssl
from typing import TYPE_CHECKING, Any

from flask_mail import Connection
from flask_mail import Message as MailMessage

if TYPE_CHECKING:
    from recovery.messaging.providers import MessagingSettings, OutgoingEmail

# How an email is written on the wire: Flask-Mail has already encoded each
# header (RFC 2047 where needed); compat32 writes them as they are, with CRLF.
_WIRE_POLICY = email.policy.compat32.clone(linesep="\r\n")


class WireMessage(MailMessage):
    """Flask-Mail's message, serialised with compat32 instead of `email.policy.SMTP`.

    Flask-Mail 0.10 serialises with `email.policy.SMTP`, which re-parses and
    refolds every header: a List-Unsubscribe longer than a line (any real
    pay-link token makes it so) comes out as RFC 2047 encoded-words, which
    RFC 2369 does not allow, so mail clients miss the one-click unsubscribe.
    It also costs ~0.7 ms an email, more than anything else we do per email.
    """

    def as_bytes(self) -> bytes:
        return self._message().as_bytes(policy=_WIRE_POLICY)


def build_email(email: OutgoingEmail, settings: MessagingSettings) -> MailMessage:
    """The email exactly as it goes out (and as the outbox shows it)."""
    domain = settings.sender_address.rpartition("@")[2] or "localhost"
    message = WireMessage(
        subject=email.subject,
        recipients=[email.to],
        body=email.text,
        html=email.html,
        # (name, address): Flask-Mail encodes a non-ASCII name once; a formatted
        # string would arrive encoded twice ("=?utf-8?q?Caf=C3=A9?=" in the inbox).
        sender=(email.from_name, settings.sender_address),
        reply_to=email.reply_to,
        extra_headers={
            # RFC 8058 one-click unsubscribe: mail clients POST to the https URL.
            "List-Unsubscribe": f"<{email.unsubscribe_url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Auto-Submitted": "auto-generated",
        }
        if email.unsubscribe_url
        else {"Auto-Submitted": "auto-generated"},
    )
    # Stable per message: a resend after a crash is recognisable as the same email.
    message.msgId = f"<recovery-{email.kind}-{email.message_id}@{domain}>"
    return message


def email_headers(email: OutgoingEmail, settings: MessagingSettings) -> list[tuple[str, str]]:
    """The headers of the email as built for sending, for the outbox page."""
    mime = build_email(email, settings)._message()
    return [
        (name, str(value)) for name, value in mime.items() if name not in ("MIME-Version", "Content-Type")
    ]


def smtp_ssl_context(settings: MessagingSettings) -> ssl.SSLContext:
    """How every SMTP connection checks the server: its certificate and its name, always.

    The system's CA store, or only the CAs in MAIL_SSL_CA_FILE (a private relay's).
    """
    return _ssl_context(settings.mail_ssl_ca_file)


@functools.lru_cache(maxsize=8)
def _ssl_context(ca_file: str) -> ssl.SSLContext:
    # Made once per process: loading the system's CA store takes ~15 ms, more than
    # a whole batch of emails; a client context can be shared by connections.
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except OSError as error:  # missing or unreadable file, or not PEM (ssl.SSLError)
        raise OSError(f"MAIL_SSL_CA_FILE {ca_file!r}: {error}") from error


# After the message's final dot a server may take long to answer (content
# scanning); RFC 5321 4.5.3.2.6 asks clients to wait up to 10 minutes there.
DATA_ANSWER_SECONDS = 300


class OutcomeUnknown(smtplib.SMTPException):
    """The connection failed after the message was handed over: the server may have taken it."""


class _SMTP(smtplib.SMTP):
    """smtplib's `data()` with a longer wait for the final answer, and a failure there told apart.

    A connection lost or timed out once DATA began may have delivered the
    message: it must not be retried, or the customer could get it twice.
    """

    def data(self, msg: Any) -> tuple[int, bytes]:
        if self.sock is not None:
            self.sock.settimeout(max(float(self.timeout), DATA_ANSWER_SECONDS))
        try:
            return super().data(msg)
        except smtplib.SMTPResponseException:
            raise  # the server answered: classified by its code as before
        except (smtplib.SMTPServerDisconnected, OSError) as error:
            raise OutcomeUnknown(f"{type(error).__name__}: {error}") from error
        finally:
            if self.sock is not None:
                self.sock.settimeout(float(self.timeout))


class _SMTPSSL(_SMTP, smtplib.SMTP_SSL):
    """The same over implicit TLS."""


class VerifiedConnection(Connection):
    """Flask-Mail's connection, but TLS (MAIL_USE_SSL or MAIL_USE_TLS) verifies the server, within a timeout.

    Flask-Mail 0.10 opens SMTP_SSL and calls starttls() without a context, so
    Python checks neither the certificate nor the host name; this is its
    `configure_host` with our context, otherwise unchanged (debug level, login
    when MAIL_USERNAME and MAIL_PASSWORD are set). A failed handshake closes
    the socket and raises (ssl.SSLCertVerificationError, an OSError) before
    any login: the password never reaches an unverified server.
    """

    def __init__(self, mail: Any, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(mail)
        self.ssl_context = context
        self.timeout = timeout

    def configure_host(self) -> smtplib.SMTP | smtplib.SMTP_SSL:
        mail = self.mail
        host: smtplib.SMTP | smtplib.SMTP_SSL
        if mail.use_ssl:
            host = _SMTPSSL(mail.server, mail.port, context=self.ssl_context, timeout=self.timeout)
        else:
            host = _SMTP(mail.server, mail.port, timeout=self.timeout)
        try:
            host.set_debuglevel(int(mail.debug))
            if mail.use_tls:
                host.starttls(context=self.ssl_context)
            if mail.username and mail.password:
                host.login(mail.username, mail.password)
        except BaseException:
            host.close()
            raise
        return host


def connection_error(error: OSError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        # e.g. "certificate verify failed: self-signed certificate" or "... Hostname mismatch, ..."
        return f"certificate verify failed: {error.verify_message or error.reason or error}"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed: {error}"
    return str(error) or type(error).__name__


def reply_text(reply: bytes | str) -> str:
    return (reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply))[:300]
