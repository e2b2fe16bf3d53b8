"""Create and find merchants (organizations)."""

from __future__ import annotations

import re
from zoneinfo import available_timezones

from sqlalchemy import select

from recovery.models import Organization
from recovery.models.base import DbSession

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class OrganizationRefused(Exception):
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
    return organization
