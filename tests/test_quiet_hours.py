"""Quiet hours: no message between 21:00 and 08:00 in the customer's own time, deferred to 08:00.

Every instant is passed explicitly (`now=`); nothing sleeps. The dates are in
January, so New York is UTC-5 and Tokyo UTC+9 (no daylight saving in Japan).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import Message, Organization, RecoveryAttempt, Transaction
from recovery.recoveries import jobs, services
from recovery.recoveries.quiet_hours import (
    QuietHours,
    allowed_at,
    country_zone,
    customer_zone,
    defer,
    parse_quiet_hours,
)

NIGHT = QuietHours(time(21), time(8))


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


@pytest.mark.parametrize(
    ("country", "at", "expected"),
    [
        ("US", SAME_INSTANT, SAME_INSTANT),  # 08:00 New York: the window has just ended
        ("JP", SAME_INSTANT, utc(2025, 1, 15, 23)),  # 22:00 Tokyo → 08:00 next morning
        ("US", utc(2025, 1, 15, 12, 59), utc(2025, 1, 15, 13)),  # 07:59 New York → 08:00
        ("US", utc(2025, 1, 16, 1, 59), utc(2025, 1, 16, 1, 59)),  # 20:59 New York: still fine
        ("US", utc(2025, 1, 16, 2), utc(2025, 1, 16, 13)),  # 21:00 New York → 08:00 next day
        ("US", utc(2025, 1, 16, 5, 30), utc(2025, 1, 16, 13)),  # 00:30 New York → 08:00 same day
        ("JP", utc(2025, 1, 15, 3), utc(2025, 1, 15, 3)),  # 12:00 Tokyo
        ("JP", utc(2025, 1, 14, 22, 59), utc(2025, 1, 14, 23)),  # 07:59 Tokyo → 08:00
    ],
)
def test_a_send_in_quiet_hours_moves_to_eight_local(country, at, expected):
    assert allowed_at(at, country=country, organization_zone="UTC", quiet_hours="21:00-08:00") == expected


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
    started = services.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id, "test"), now=now
    )
    db.session.commit()
    return started.attempt


def send(db: Any, attempt: RecoveryAttempt, now: datetime) -> services.SendResult:
    db.session.expire_all()
    attempt = db.session.get(RecoveryAttempt, attempt.id)
    return services.send_due(
        db.session, jobs.postman(), attempt.id, attempt.step, base_url="http://x", now=now
    )


def sent_steps(db: Any, attempt: RecoveryAttempt) -> list[int]:
    db.session.expire_all()
    return list(db.session.scalars(select(Message.step).where(Message.attempt_id == attempt.id)))


def test_start_defers_the_first_message_per_customer_zone(db, org, make_transaction):
    american = make_transaction(org, customer_country="US")
    japanese = make_transaction(org, customer_country="JP")

    us_attempt = start(db, american, SAME_INSTANT)
    jp_attempt = start(db, japanese, SAME_INSTANT)

    assert us_attempt.next_send_at == SAME_INSTANT
    assert jp_attempt.next_send_at == utc(2025, 1, 15, 23)


def test_without_a_country_the_organizations_zone_counts(db, make_org, make_transaction):
    berlin = make_org(timezone="Europe/Berlin", quiet_hours="21:00-08:00")
    # 21:30 UTC is 22:30 in Berlin → 08:00 Berlin is 07:00 UTC.
    attempt = start(db, make_transaction(berlin, customer_country=None), utc(2025, 1, 15, 21, 30))

    assert attempt.next_send_at == utc(2025, 1, 16, 7)


def test_a_send_that_became_quiet_is_checked_again_and_deferred(db, org, make_transaction):
    attempt = start(db, make_transaction(org, customer_country="US"), utc(2025, 1, 16, 1))  # 20:00 NY

    # The worker gets to it late: 21:30 in New York.
    late = send(db, attempt, utc(2025, 1, 16, 2, 30))

    assert late.outcome == "quiet_hours"
    assert late.next_send_at == utc(2025, 1, 16, 13)
    assert sent_steps(db, attempt) == []
    # At 08:00 in New York it goes out.
    assert send(db, attempt, utc(2025, 1, 16, 13)).outcome == "sent"
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
    # Started at 23:00 in New York: the first message waits for 08:00.
    attempt = start(db, make_transaction(org, customer_country="US"), utc(2025, 1, 16, 4))
    assert attempt.next_send_at == utc(2025, 1, 16, 13)

    result = send(db, attempt, utc(2025, 1, 16, 13))

    # Day 1 is 23:00 the next evening in New York: moved to 08:00 the morning after.
    assert result.outcome == "sent" and result.step == 1
    assert result.next_send_at == utc(2025, 1, 17, 13)


def test_the_sweeper_does_not_pick_up_a_deferred_send_early(db, org, make_transaction):
    attempt = start(db, make_transaction(org, customer_country="JP"), SAME_INSTANT)

    assert services.due_attempts(db.session, SAME_INSTANT) == []
    assert [row[0] for row in services.due_attempts(db.session, utc(2025, 1, 15, 23))] == [attempt.id]
