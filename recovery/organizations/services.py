"""Create and find merchants (organizations)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import available_timezones

from sqlalchemy import select

from recovery import audit
from recovery.audit import Actor
from recovery.campaigns import builtin
from recovery.campaigns import services as campaigns
from recovery.models import Organization
from recovery.models.base import DbSession
from recovery.refusals import Refused

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class OrganizationRefused(Refused):
    """The organization cannot be created as asked; the message says why."""


def get_by_slug(session: DbSession, slug: str) -> Organization | None:
    return session.scalar(select(Organization).where(Organization.slug == slug))


def create_organization(session: DbSession, slug: str, name: str, timezone: str = "UTC") -> Organization:
    slug = slug.strip().lower()
    if not _SLUG.match(slug):
        raise OrganizationRefused(
            "The slug must be 1–63 lower-case letters, digits or hyphens, "
            "not starting or ending with a hyphen."
        )
    name = name.strip()
    if not name or len(name) > 200:
        raise OrganizationRefused("The name must have 1–200 characters.")
    if timezone not in available_timezones():
        raise OrganizationRefused(f"{timezone!r} is not an IANA time zone (e.g. Europe/Berlin).")
    if get_by_slug(session, slug) is not None:
        raise OrganizationRefused(f"An organization with slug {slug!r} already exists.")
    organization = Organization(slug=slug, name=name, timezone=timezone)
    session.add(organization)
    session.flush()
    builtin.install(session, organization)
    return organization


# --- recovery settings -------------------------------------------------------------

_FAILURE_CODE = re.compile(r"^[a-z0-9_]{1,60}$")
MAX_LIFETIME_DAYS = 90
FALLBACK_CHOICES = ("email", "sms")


class SettingsRefused(Refused):
    """A recovery setting is not acceptable; `field` names it."""

    field: str

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message, field=field)


@dataclass(frozen=True)
class RecoverySettings:
    """What the settings page edits; strings as typed, cleaned by update_recovery_settings."""

    recovery_schedule: str
    attempt_lifetime_days: int
    email_from_name: str | None
    reply_to_email: str | None
    excluded_failure_codes: str | None
    auto_start_recoveries: bool
    fallback_channels: Sequence[str]
    quiet_hours: str | None


def clean_recovery_settings(values: RecoverySettings) -> dict[str, Any]:
    """The column values for `values`, or SettingsRefused naming the first field at fault."""
    from email_validator import EmailNotValidError, validate_email

    from recovery.messaging.quiet_hours import parse_quiet_hours
    from recovery.recoveries.refusals import RecoveryRefused
    from recovery.recoveries.schedule import format_schedule, parse_schedule

    try:
        days = parse_schedule(values.recovery_schedule)
    except RecoveryRefused as refused:
        raise SettingsRefused(refused.message, "recovery_schedule") from None
    lifetime = values.attempt_lifetime_days
    if not 1 <= lifetime <= MAX_LIFETIME_DAYS:
        raise SettingsRefused(f"The link lives 1 to {MAX_LIFETIME_DAYS} days.", "attempt_lifetime_days")
    if days[-1] >= lifetime:
        raise SettingsRefused(
            f"The last message (day {days[-1]}) must come before the link expires after {lifetime} days.",
            "recovery_schedule",
        )
    from_name = (values.email_from_name or "").strip() or None
    if from_name is not None and (len(from_name) > 100 or any(c in from_name for c in '\r\n<>"')):
        raise SettingsRefused(
            'The sender name has at most 100 characters, without < > " or line breaks.', "email_from_name"
        )
    reply_to = (values.reply_to_email or "").strip() or None
    if reply_to is not None:
        try:
            reply_to = validate_email(reply_to, check_deliverability=False).normalized
        except EmailNotValidError as error:
            raise SettingsRefused(f"The reply-to address is not valid: {error}", "reply_to_email") from None
    codes = [c.strip().lower() for c in (values.excluded_failure_codes or "").replace("\n", ",").split(",")]
    codes = list(dict.fromkeys(c for c in codes if c))
    wrong = [c for c in codes if not _FAILURE_CODE.match(c)]
    if wrong:
        raise SettingsRefused(
            f"Failure codes are Stripe's, like expired_card or insufficient_funds; not {wrong[0]!r}.",
            "excluded_failure_codes",
        )
    excluded = ",".join(codes) or None
    if excluded is not None and len(excluded) > 500:
        raise SettingsRefused("Too many failure codes (500 characters at most).", "excluded_failure_codes")
    unknown = [c for c in values.fallback_channels if c not in FALLBACK_CHOICES]
    if unknown:
        raise SettingsRefused(f"Unknown channel {unknown[0]!r}.", "fallback_channels")
    try:
        window = parse_quiet_hours(values.quiet_hours)
    except ValueError as error:
        raise SettingsRefused(str(error), "quiet_hours") from None
    return {
        "recovery_schedule": format_schedule(days),
        "attempt_lifetime_days": lifetime,
        "email_from_name": from_name,
        "reply_to_email": reply_to,
        "excluded_failure_codes": excluded,
        "auto_start_recoveries": bool(values.auto_start_recoveries),
        "fallback_channels": ",".join(c for c in FALLBACK_CHOICES if c in values.fallback_channels),
        "quiet_hours": str(window) if window else "",
    }


def update_recovery_settings(
    session: DbSession, organization: Organization, actor: Actor, values: RecoverySettings
) -> list[str]:
    """Validate and apply the organization's recovery settings; audit and return the fields changed.

    Attempts already running keep their schedule and expiry; quiet hours and
    fallback apply to their next sends.
    """
    cleaned = clean_recovery_settings(values)
    changes = {
        name: [getattr(organization, name), value]
        for name, value in cleaned.items()
        if getattr(organization, name) != value
    }
    for name, (_, value) in changes.items():
        setattr(organization, name, value)
    if {"recovery_schedule", "attempt_lifetime_days"} & changes.keys():
        _sync_default_campaign(session, organization, actor)
    if changes:
        audit.record(
            session,
            actor,
            "organization.recovery_settings_changed",
            target_type="organization",
            target_id=organization.id,
            changes=changes,
        )
    return list(changes)


def _sync_default_campaign(session: DbSession, organization: Organization, actor: Actor) -> None:
    """Keep the default campaign equal to the schedule and lifetime just saved (a new version of it)."""
    from recovery.recoveries.schedule import parse_schedule

    days = parse_schedule(organization.recovery_schedule)
    campaigns.sync_default(session, organization, actor, days, organization.attempt_lifetime_days)
