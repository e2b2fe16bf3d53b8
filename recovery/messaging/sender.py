"""The app's message sender: the providers (SMTP through Flask-Mail, Twilio) as MessagingSettings says.

Built once per app, in `app.extensions`; every send (recovery messages, staff
emails, look-ups at Twilio) takes its Postman from here, so this is the one
place a test points sending elsewhere (`use`). A Postman holds one batch's
SMTP connection, so each job or request gets its own (`postman()`); what they
share, the settings and the Mail extension, is built once.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app
from flask_mail import Mail

from recovery.config import settings
from recovery.extensions import mail
from recovery.messaging.providers import MessagingSettings, Postman

KEY = "recovery_sender"


@dataclass(frozen=True)
class Sender:
    settings: MessagingSettings
    mail: Mail | None

    def postman(self) -> Postman:
        """A Postman of its own for one job or request (it is not shared between threads)."""
        return Postman(self.settings, self.mail)


def sender(app: Flask | None = None) -> Sender:
    """The app's sender, built from its configuration on first use."""
    app = app or current_app
    found: Sender | None = app.extensions.get(KEY)
    if found is None:
        found = app.extensions[KEY] = Sender(settings(MessagingSettings, app), mail)
    return found


def use(app: Flask, replacement: Sender) -> None:
    """Send through `replacement` from now on (tests: another server, other settings)."""
    app.extensions[KEY] = replacement


def postman(app: Flask | None = None) -> Postman:
    return sender(app).postman()


def messaging_settings(app: Flask | None = None) -> MessagingSettings:
    return sender(app).settings
