"""Quiet hours: no message between 21:00 and 08:00 in the customer's own time, deferred to 08:00.

Every instant is passed explicitly (`now=`); nothing sleeps. The dates are in
January unless said, so New York is UTC-5, Los Angeles UTC-8, Honolulu UTC-10
and Tokyo UTC+9 (no daylight saving in Japan or Hawaii). A US customer without
a phone number may be in any of those: they hear from us between 08:00 in
Honolulu (18:00 UTC) and 21:00 in New York (02:00 UTC).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from recovery.audit import Actor
from recovery.messaging import sender
from recovery.messaging.quiet_hours import (
    QuietHours,
    allowed_at,
    country_zone,
    customer_zone,
    customer_zones,
    defer,
    defer_in_all,
    parse_quiet_hours,
)
from recovery.models import Message, Organization, RecoveryAttempt, Transaction
from recovery.recoveries import answers, claims, lifecycle, sending

NIGHT = QuietHours(time(21), time(8))
NIGHTLY = "21:00-08:00"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- the rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "zone"),
    [
        ("US", "America/New_York"),
        ("us", "America/New_York"),
        ("JP", "Asia/Tokyo"),
        ("FR", "Europe/Paris"),
        ("AU", "Australia/Sydney"),
        ("BR", "America/Sao_Paulo"),
        ("GB", "Europe/London"),
    ],
)
def test_a_country_gives_its_most_populous_zone(country, zone):
    assert country_zone(country) == ZoneInfo(zone)


@pytest.mark.parametrize("country", [None, "", "XX", "USA", "1"])
def test_no_usable_country_falls_back_to_the_organizations_zone(country):
    assert country_zone(country) is None
    assert customer_zone(country, "Europe/Berlin") == ZoneInfo("Europe/Berlin")
    assert customer_zone(country, "Not/AZone") == ZoneInfo("UTC")


# 13:00 UTC on 15 January: 08:00 in New York, 22:00 in Tokyo.
SAME_INSTANT = utc(2025, 1, 15, 13)
NEW_YORK_PHONE = "+12125550123"
CALIFORNIA_PHONE = "+14155550123"


@pytest.mark.parametrize(
    ("country", "phone", "at", "expected"),
    [
        ("US", NEW_YORK_PHONE, SAME_INSTANT, SAME_INSTANT),  # 08:00 New York: the window has just ended
        ("JP", None, SAME_INSTANT, utc(2025, 1, 15, 23)),  # 22:00 Tokyo → 08:00 next morning
        ("US", NEW_YORK_PHONE, utc(2025, 1, 15, 12, 59), utc(2025, 1, 15, 13)),  # 07:59 New York → 08:00
        ("US", NEW_YORK_PHONE, utc(2025, 1, 16, 1, 59), utc(2025, 1, 16, 1, 59)),  # 20:59 New York: fine
        ("US", NEW_YORK_PHONE, utc(2025, 1, 16, 2), utc(2025, 1, 16, 13)),  # 21:00 New York → 08:00
        ("US", NEW_YORK_PHONE, utc(2025, 1, 16, 5, 30), utc(2025, 1, 16, 13)),  # 00:30 New York → 08:00
        ("JP", None, utc(2025, 1, 15, 3), utc(2025, 1, 15, 3)),  # 12:00 Tokyo
        ("JP", None, utc(2025, 1, 14, 22, 59), utc(2025, 1, 14, 23)),  # 07:59 Tokyo → 08:00
    ],
)
def test_a_send_in_quiet_hours_moves_to_eight_local(country, phone, at, expected):
    assert (
        allowed_at(at, country=country, phone=phone, organization_zone="UTC", quiet_hours="21:00-08:00")
        == expected
    )


def night(at: datetime, *, country: str | None, phone: str | None = None, quiet_hours: str = NIGHTLY):
    """When a message may reach this customer of an organization in Tokyo."""
    return allowed_at(
        at, country=country, phone=phone, organization_zone="Asia/Tokyo", quiet_hours=quiet_hours
    )


def test_a_country_of_several_zones_is_quiet_while_any_of_them_is():
    # 13:30 UTC is 08:30 in New York but 05:30 in Los Angeles and 03:30 in Honolulu.
    assert night(utc(2025, 1, 15, 13, 30), country="US") == utc(2025, 1, 15, 18)  # 08:00 Honolulu
    # 20:30 in New York, 15:30 in Honolulu: every US clock says day.
    assert night(utc(2025, 1, 16, 1, 30), country="US") == utc(2025, 1, 16, 1, 30)
    # 21:00 in New York is quiet although it is afternoon further west.
    assert night(utc(2025, 1, 16, 2), country="US") == utc(2025, 1, 16, 18)


def test_the_common_window_follows_each_zones_daylight_saving_time():
    # In July New York is UTC-4 while Honolulu stays UTC-10: 01:30 UTC is 21:30 in New York.
    assert night(utc(2025, 7, 16, 1, 30), country="US") == utc(2025, 7, 16, 18)
    # 9 March 2025, New York springs forward at 02:00: 21:00 EST on the 8th, then 08:00 HST on the 9th.
    assert night(utc(2025, 3, 9, 2), country="US") == utc(2025, 3, 9, 18)
    # 2 November 2025, New York falls back: 20:30 EST is 01:30 UTC, allowed again.
    assert night(utc(2025, 11, 3, 1, 30), country="US") == utc(2025, 11, 3, 1, 30)
    assert night(utc(2025, 11, 1, 1, 30), country="US") == utc(2025, 11, 1, 18)  # 21:30 EDT the day before


@pytest.mark.parametrize(
    ("country", "phone", "zones"),
    [
        ("US", CALIFORNIA_PHONE, ["America/Los_Angeles"]),
        (None, CALIFORNIA_PHONE, ["America/Los_Angeles"]),
        ("us", "(415) 555-0123", ["America/Los_Angeles"]),  # a national number, read in the country
        ("US", "+18085550123", ["Pacific/Honolulu"]),
        ("US", "+19075550123", ["America/Adak", "America/Anchorage"]),  # Alaska's one area code
        ("RU", "+74232123456", ["Asia/Vladivostok"]),
        ("FR", CALIFORNIA_PHONE, ["Europe/Paris"]),  # a number from abroad: the country decides
        ("JP", None, ["Asia/Tokyo"]),
        (None, None, ["Asia/Tokyo"]),  # nothing known: the organization's zone
        (None, "not a number", ["Asia/Tokyo"]),
        ("US", "+15555550123", None),  # no area known: every US zone
    ],
)
def test_a_phone_number_narrows_the_customers_zones(country, phone, zones):
    found = [zone.key for zone in customer_zones(country, phone, "Asia/Tokyo")]
    if zones is None:
        assert "America/New_York" in found and "Pacific/Honolulu" in found
    else:
        assert found == zones


def test_a_californian_number_is_judged_by_pacific_time():
    # 13:30 UTC is 05:30 in San Francisco → 08:00 PST.
    assert night(utc(2025, 1, 15, 13, 30), country="US", phone=CALIFORNIA_PHONE) == utc(2025, 1, 15, 16)
    # 04:30 UTC is 23:30 in New York but 20:30 in San Francisco: fine for this customer.
    assert night(utc(2025, 1, 16, 4, 30), country="US", phone=CALIFORNIA_PHONE) == utc(2025, 1, 16, 4, 30)


def test_a_toll_free_number_counts_only_its_countrys_zones():
    # libphonenumber gives +1 800 every zone of the calling code, Guam (UTC+10) to Pago Pago
    # (UTC-11): no hour would suit them all. Trimmed to the US it is the US window.
    assert night(utc(2025, 1, 15, 13, 30), country="US", phone="+18005550123") == utc(2025, 1, 15, 18)
    assert night(utc(2025, 1, 15, 13, 30), country=None, phone="+18005550123") == utc(2025, 1, 15, 18)


def test_russia_gets_the_three_hours_its_eleven_zones_share():
    # From Kaliningrad (UTC+2) to Kamchatka (UTC+12): 08:00 in Kamchatka is 20:00 UTC,
    # 21:00 in Kaliningrad is 19:00 UTC, so only 06:00-09:00 UTC is day everywhere.
    assert night(utc(2025, 1, 15, 13, 30), country="RU") == utc(2025, 1, 16, 6)
    assert night(utc(2025, 1, 16, 8, 59), country="RU") == utc(2025, 1, 16, 8, 59)
    assert night(utc(2025, 1, 16, 9), country="RU") == utc(2025, 1, 17, 6)


def test_zones_too_far_apart_for_a_common_hour_fall_back_to_the_countrys_main_zone():
    # Day is 12:00-18:00: no instant is day in both Kaliningrad and Kamchatka.
    zones = customer_zones("RU", None, "UTC")
    assert defer_in_all(utc(2025, 1, 15, 13, 30), zones, parse_quiet_hours("18:00-12:00")) is None
    # So Moscow (UTC+3) decides: 16:30 there is fine, 23:00 waits for 12:00.
    afternoon, late = utc(2025, 1, 15, 13, 30), utc(2025, 1, 15, 20)
    assert night(afternoon, country="RU", quiet_hours="18:00-12:00") == afternoon
    assert night(late, country="RU", quiet_hours="18:00-12:00") == utc(2025, 1, 16, 9)


def test_without_a_window_every_zone_allows_every_instant():
    assert defer_in_all(SAME_INSTANT, customer_zones("RU", None, "UTC"), None) == SAME_INSTANT


def test_daylight_saving_time_is_local_time():
    # 9 March 2025, New York springs forward at 02:00; 08:00 EDT is 12:00 UTC.
    assert defer(utc(2025, 3, 9, 6), ZoneInfo("America/New_York"), NIGHT) == utc(2025, 3, 9, 12)
    # The day before, 08:00 EST is 13:00 UTC.
    assert defer(utc(2025, 3, 8, 6), ZoneInfo("America/New_York"), NIGHT) == utc(2025, 3, 8, 13)


def test_no_window_sends_at_any_hour():
    assert allowed_at(SAME_INSTANT, country="JP", organization_zone="UTC", quiet_hours=None) == SAME_INSTANT


def test_a_daytime_window_works_too():
    lunch = parse_quiet_hours("12:00-13:30")
    assert lunch is not None
    assert defer(utc(2025, 1, 15, 12, 45), ZoneInfo("UTC"), lunch) == utc(2025, 1, 15, 13, 30)
    assert defer(utc(2025, 1, 15, 13, 30), ZoneInfo("UTC"), lunch) == utc(2025, 1, 15, 13, 30)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("21:00-08:00", "21:00-08:00"),
        (" 9:30 - 7:15 ", "09:30-07:15"),
        ("", None),
        (None, None),
    ],
)
def test_quiet_hours_are_parsed(raw, expected):
    window = parse_quiet_hours(raw)
    assert (str(window) if window else None) == expected


@pytest.mark.parametrize("raw", ["21-8", "25:00-08:00", "21:00", "08:00-08:00", "21:60-08:00", "night"])
def test_malformed_quiet_hours_are_refused(raw):
    with pytest.raises(ValueError):
        parse_quiet_hours(raw)


def test_a_malformed_stored_window_counts_as_the_default():
    assert allowed_at(SAME_INSTANT, country="JP", organization_zone="UTC", quiet_hours="junk") == utc(
        2025, 1, 15, 23
    )


# --- in the engine ---------------------------------------------------------------------------


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    return make_org(name="Acme Shop", quiet_hours="21:00-08:00", recovery_schedule="0,1,3")


def start(db: Any, transaction: Transaction, now: datetime) -> RecoveryAttempt:
    started = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id, "test"), now=now
    )
    db.session.commit()
    return started.attempt


def send(db: Any, attempt: RecoveryAttempt, now: datetime) -> answers.SendResult:
    db.session.expire_all()
    attempt = db.session.get(RecoveryAttempt, attempt.id)
    return sending.send_due(
        db.session, sender.postman(), attempt.id, attempt.step, base_url="http://x", now=now
    )


def sent_steps(db: Any, attempt: RecoveryAttempt) -> list[int]:
    db.session.expire_all()
    return list(db.session.scalars(select(Message.step).where(Message.attempt_id == attempt.id)))


def test_start_defers_the_first_message_per_customer_zone(db, org, make_transaction):
    american = make_transaction(org, customer_country="US")
    japanese = make_transaction(org, customer_country="JP")
    french = make_transaction(org, customer_country="FR")

    us_attempt = start(db, american, SAME_INSTANT)
    jp_attempt = start(db, japanese, SAME_INSTANT)
    fr_attempt = start(db, french, SAME_INSTANT)

    # 08:00 in New York is 03:00 in Honolulu: the US customer waits for 08:00 there.
    assert us_attempt.next_send_at == utc(2025, 1, 15, 18)
    assert jp_attempt.next_send_at == utc(2025, 1, 15, 23)
    assert fr_attempt.next_send_at == SAME_INSTANT  # 14:00 in Paris


def test_without_a_country_the_organizations_zone_counts(db, make_org, make_transaction):
    berlin = make_org(timezone="Europe/Berlin", quiet_hours="21:00-08:00")
    # 21:30 UTC is 22:30 in Berlin → 08:00 Berlin is 07:00 UTC.
    attempt = start(db, make_transaction(berlin, customer_country=None), utc(2025, 1, 15, 21, 30))

    assert attempt.next_send_at == utc(2025, 1, 16, 7)


def test_a_send_that_became_quiet_is_checked_again_and_deferred(db, org, make_transaction):
    attempt = start(db, make_transaction(org, customer_country="US"), utc(2025, 1, 16, 1))  # 20:00 NY
    assert attempt.next_send_at == utc(2025, 1, 16, 1)

    # The worker gets to it late: 21:30 in New York.
    late = send(db, attempt, utc(2025, 1, 16, 2, 30))

    assert late.outcome == "quiet_hours"
    assert late.next_send_at == utc(2025, 1, 16, 18)
    assert sent_steps(db, attempt) == []
    # At 08:00 in Honolulu (13:00 in New York) it goes out.
    assert send(db, attempt, utc(2025, 1, 16, 18)).outcome == "sent"
    assert sent_steps(db, attempt) == [0]


def test_quiet_hours_changed_after_scheduling_still_hold(db, make_org, make_transaction):
    org = make_org(quiet_hours="")
    attempt = start(db, make_transaction(org, customer_country="JP"), SAME_INSTANT)
    assert attempt.next_send_at == SAME_INSTANT  # no window when it was scheduled
    org.quiet_hours = "21:00-08:00"
    db.session.commit()

    result = send(db, attempt, SAME_INSTANT)

    assert (result.outcome, result.next_send_at) == ("quiet_hours", utc(2025, 1, 15, 23))
    assert sent_steps(db, attempt) == []


def test_the_next_step_is_scheduled_out_of_quiet_hours(db, org, make_transaction):
    # Started at 23:00 in New York: the first message waits for 08:00 in Honolulu.
    attempt = start(db, make_transaction(org, customer_country="US"), utc(2025, 1, 16, 4))
    assert attempt.next_send_at == utc(2025, 1, 16, 18)

    result = send(db, attempt, utc(2025, 1, 16, 18))

    # Day 1 is 23:00 the next evening in New York: moved to 08:00 the morning after.
    assert result.outcome == "sent" and result.step == 1
    assert result.next_send_at == utc(2025, 1, 17, 18)


def test_the_sweeper_does_not_pick_up_a_deferred_send_early(db, org, make_transaction):
    attempt = start(db, make_transaction(org, customer_country="JP"), SAME_INSTANT)

    assert claims.due_attempts(db.session, SAME_INSTANT) == []
    assert [row[0] for row in claims.due_attempts(db.session, utc(2025, 1, 15, 23))] == [attempt.id]
