"""Quiet hours: no message reaches a customer at night in their own time zone.

Pure functions, no database. Where the customer may be is a set of zones:
those of their phone number's area (libphonenumber's data) when it lies in
their country, else all of their country's zones (Babel's CLDR territory data,
offline), else the organization's zone. An instant is allowed only if it is
outside the quiet window in every one of those zones, so a US customer
without a phone hears from us between 08:00 in Honolulu and 21:00 in New York.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from babel.core import get_global
from phonenumbers import timezone as phone_timezone

# Countries with several zones: the zone where most of their people live.
# Babel lists such zones in no useful order (America/Adak first for the US).
# Used only where one zone must stand for the country: when no hour suits all
# of its zones (see `allowed_at`) and to name the zone of a link's expiry.
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

# A common allowed instant, if the zones have one, comes within a day of any
# start; two days leave room for a DST change shifting one zone's window.
_SEARCH = timedelta(days=2)

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


def _country_code(country: str | None) -> str | None:
    if not country or len(country.strip()) != 2:
        return None
    return country.strip().upper()


def _zones(names: Iterable[str]) -> tuple[ZoneInfo, ...]:
    """The zones of `names` that exist, once each, in a stable order."""
    return tuple(zone for zone in (_zone(name) for name in sorted(set(names))) if zone is not None)


def country_zone(country: str | None) -> ZoneInfo | None:
    """The time zone most of a country's people live in (ISO 3166 alpha-2), or None if unknown."""
    code = _country_code(country)
    if code is None:
        return None
    name = PRIMARY_ZONES.get(code)
    if name is None:
        zones = get_global("territory_zones").get(code) or []
        name = zones[0] if len(zones) == 1 else None
    return _zone(name) if name else None


@lru_cache(maxsize=512)
def country_zones(country: str | None) -> tuple[ZoneInfo, ...]:
    """Every time zone of a country (ISO 3166 alpha-2); empty if unknown."""
    code = _country_code(country)
    if code is None:
        return ()
    return _zones(get_global("territory_zones").get(code) or ())


@lru_cache(maxsize=4096)
def phone_zones(phone: str | None, country: str | None) -> tuple[ZoneInfo, ...]:
    """The zones of a phone number's area that lie in `country` (or in the number's own country).

    Empty when the number says nothing useful: unparsable, no area data, or
    only zones outside the customer's country (a number from abroad says where
    the phone was bought, the country where its owner pays from).
    """
    if not phone:
        return ()
    try:
        number = phonenumbers.parse(phone, _country_code(country))
    except phonenumbers.NumberParseException:
        return ()
    # libphonenumber answers for the whole calling code where it knows no area
    # (+1 800 spans Guam to Newfoundland); the country's own zones trim that.
    home = country_zones(_country_code(country) or phonenumbers.region_code_for_number(number))
    return tuple(zone for zone in _zones(phone_timezone.time_zones_for_number(number)) if zone in home)


def customer_zone(country: str | None, organization_zone: str | None) -> ZoneInfo:
    """One zone to stand for the customer: their country's main one, else the organization's, else UTC."""
    return country_zone(country) or _zone(organization_zone or "UTC") or ZoneInfo("UTC")


def customer_zones(
    country: str | None, phone: str | None, organization_zone: str | None
) -> tuple[ZoneInfo, ...]:
    """Every zone the customer may be in: their phone's, else their country's, else the organization's."""
    return (
        phone_zones(phone, country)
        or country_zones(country)
        or (_zone(organization_zone or "UTC") or ZoneInfo("UTC"),)
    )


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


def defer_in_all(at: datetime, zones: Iterable[ZoneInfo], window: QuietHours | None) -> datetime | None:
    """The first instant at or after `at` outside the quiet window in every zone; None if none comes soon.

    Each zone's `defer` is the earliest instant it allows, so no common instant
    lies before the latest of them: jump there and ask again until all agree.
    """
    if window is None:
        return at
    # Zones with the same offsets at both ends of the search keep the same
    # windows in it (they change clocks together): one of each is enough,
    # which makes the 29 zones of the US six clocks in January.
    horizon = at + _SEARCH + timedelta(days=1)
    clocks = {(at.astimezone(zone).utcoffset(), horizon.astimezone(zone).utcoffset()): zone for zone in zones}
    candidate = at
    while candidate - at <= _SEARCH:
        later = max((defer(candidate, zone, window) for zone in clocks.values()), default=candidate)
        if later == candidate:
            return candidate
        candidate = later
    return None


def allowed_at(
    at: datetime,
    *,
    country: str | None,
    organization_zone: str | None,
    quiet_hours: str | None,
    phone: str | None = None,
) -> datetime:
    """The first moment at or after `at` when a message may reach this customer.

    A malformed stored window counts as the default one: better quiet than a text at 3 a.m.
    When the customer's zones are too far apart for any hour to suit them all
    (Russia's eleven under a window of 18:00-12:00), the country's main zone
    decides, as one zone must: its people are the likeliest customers.
    """
    try:
        window = parse_quiet_hours(quiet_hours)
    except ValueError:
        window = QuietHours(time(21), time(8))
    allowed = defer_in_all(at, customer_zones(country, phone, organization_zone), window)
    if allowed is None:
        allowed = defer(at, customer_zone(country, organization_zone), window)
    return allowed
