"""The settings of staff accounts: sign-in limits and lengths, links in staff emails, where they go."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Flask

from recovery.auth.reset import Signer
from recovery.config import settings
from recovery.messaging.providers import MessagingSettings


@dataclass(frozen=True)
class StaffSettings:
    signer: Signer
    base_url: str
    is_production: bool
    # How staff emails (invitations, reset links) are sent.
    messaging: MessagingSettings
    login_failures_per_minute: int
    password_resets_per_hour: int
    sign_in_duration: timedelta
    remember_duration: timedelta

    @property
    def email_to_outbox(self) -> bool:
        """Staff emails go to the development outbox: no SMTP server is configured."""
        return self.messaging.email_to_outbox

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StaffSettings:
        return cls(
            signer=Signer.from_config(config),
            base_url=str(config["BASE_URL"]),
            is_production=config["APP_ENV"] == "production",
            messaging=MessagingSettings.from_config(config),
            login_failures_per_minute=int(config["LOGIN_FAILURES_PER_MINUTE"]),
            password_resets_per_hour=int(config.get("PASSWORD_RESETS_PER_HOUR", 5)),
            sign_in_duration=config["SIGN_IN_DURATION"],
            remember_duration=config["REMEMBER_COOKIE_DURATION"],
        )


def staff_settings(app: Flask | None = None) -> StaffSettings:
    """The app's staff settings, read from its config once."""
    return settings(StaffSettings, app)
