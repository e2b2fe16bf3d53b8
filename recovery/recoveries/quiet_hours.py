"""Quiet hours: no message reaches a customer at night in their own time zone.

Pure functions, no database. The customer's zone comes from their country
(Babel's CLDR territory data, offline), else the organization's zone. A
country spanning several zones gets its most populous one: a guess, but one
that keeps most customers' evenings quiet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.core import get_global

# Countries with several zones: the zone where most of their people live.
# Babel lists such zones in no useful order (America/Adak first for the US).
PRIMARY_ZONES = {
    "AQ": "Antarctica/McMurdo",
    "AR": "America/Argentina/Buenos_Aires",
    "AU": "Australia/Sydney",
    "BR": "America/Sao_Paulo",
    "CA": "America/Toronto",
    "CD": "Africa/Kinshasa",
    "CL": "America/Santiago",
    "CN": "Asia/Shanghai",
    "CY": "Asia/Nicosia",
    "DE": "Europe/Berlin",
    "EC": "America/Guayaquil",
    "ES": "Europe/Madrid",
    "FM": "Pacific/Pohnpei",
    "GL": "America/Nuuk",
    "ID": "Asia/Jakarta",
    "KI": "Pacific/Tarawa",
    "KZ": "Asia/Almaty",
    "MH": "Pacific/Majuro",
    "MN": "Asia/Ulaanbaatar",
    "MX": "America/Mexico_City",
    "MY": "Asia/Kuala_Lumpur",
    "NZ": "Pacific/Auckland",
    "PF": "Pacific/Tahiti",
    "PG": "Pacific/Port_Moresby",
    "PS": "Asia/Gaza",
    "PT": "Europe/Lisbon",
    "RU": "Europe/Moscow",
    "UA": "Europe/Kyiv",
    "UM": "Pacific/Midway",
    "US": "America/New_York",
    "UZ": "Asia/Tashkent",
}

_WINDOW = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


@dataclass(frozen=True)
class QuietHours:
    """A nightly window [start, end) of local time; it may wrap past midnight (21:00-08:00)."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, local: time) -> bool:
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


def parse_quiet_hours(raw: str | None) -> QuietHours | None:
    """ "21:00-08:00" → QuietHours; empty → None (send at any hour); ValueError if malformed."""
    if raw is None or not raw.strip():
        return None
    found = _WINDOW.match(raw)
    if found is None:
        raise ValueError("Quiet hours look like 21:00-08:00 (from-to, 24-hour clock).")
    sh, sm, eh, em = (int(g) for g in found.groups())
    window = QuietHours(time(sh, sm), time(eh, em))
    if window.start == window.end:
        raise ValueError("Quiet hours must start and end at different times.")
    return window


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def country_zone(country: str | None) -> ZoneInfo | None:
    """The time zone most of a country's people live in (ISO 3166 alpha-2), or None if unknown."""
    if not country or len(country.strip()) != 2:
        return None
    code = country.strip().upper()
    name = PRIMARY_ZONES.get(code)
    if name is None:
        zones = get_global("territory_zones").get(code) or []
        name = zones[0] if len(zones) == 1 else None
    return _zone(name) if name else None


def customer_zone(country: str | None, organization_zone: str | None) -> ZoneInfo:
    """The customer's zone: from their country, else the organization's, else UTC."""
    return country_zone(country) or _zone(organization_zone or "UTC") or ZoneInfo("UTC")


def defer(at: datetime, zone: ZoneInfo, window: QuietHours | None) -> datetime:
    """`at` itself if it falls outside the quiet window in `zone`, else the window's end (local), in UTC."""
    if window is None:
        return at
    local = at.astimezone(zone)
    if not window.contains(local.time().replace(tzinfo=None)):
        return at
    end = datetime.combine(local.date(), window.end, tzinfo=zone)
    if end <= local:
        end = datetime.combine(local.date() + timedelta(days=1), window.end, tzinfo=zone)
    # Round-trip through UTC so a non-existent local time (a DST gap) lands on a real instant.
    return end.astimezone(UTC)


def allowed_at(
    at: datetime, *, country: str | None, organization_zone: str | None, quiet_hours: str | None
) -> datetime:
    """The first moment at or after `at` when a message may reach this customer.

    A malformed stored window counts as the default one: better quiet than a text at 3 a.m.
    """
    try:
        window = parse_quiet_hours(quiet_hours)
    except ValueError:
        window = QuietHours(time(21), time(8))
    return defer(at, customer_zone(country, organization_zone), window)
