"""Merchant-facing words: decline codes as sentences, statuses that say what we know, times with their zone.

Also the bulk start's promise: how many first messages go now and how many
wait for the end of quiet hours, counted by the sending rule itself.
"""

from __future__ import annotations

import html as html_text
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient

from recovery.audit import Actor
from recovery.declines import describe
from recovery.models import Message, Organization, RecoveryAttempt, Transaction, User, utcnow
from recovery.recoveries import bulk
from recovery.templating import format_datetime, message_status, message_status_meaning

# A time shown to staff: "7 Dec 2026, 17:40 UTC".
SHOWN_TIME = re.compile(r"\b\d{1,2} [A-Z][a-z]{2} \d{4}, \d{2}:\d{2} UTC\b")
BARE_TIME = re.compile(r"\b\d{4}-\d{2}-\d{2} \d{2}:\d{2}\b(?! UTC)")


def page(client: FlaskClient, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.get_data(as_text=True)


def test_a_time_names_its_zone() -> None:
    moment = datetime(2026, 12, 7, 17, 40, tzinfo=UTC)
    assert format_datetime(moment) == "7 Dec 2026, 17:40 UTC"
    assert format_datetime(moment, "Europe/Paris") == "7 Dec 2026, 18:40 CET"
    assert format_datetime(None) == "—"


@pytest.mark.parametrize(
    ("code", "title", "sentence"),
    [
        ("insufficient_funds", "Insufficient funds", "There was not enough money on the card."),
        (
            "expired_card",
            "Card expired",
            "The card has expired. The customer needs to pay with another card.",
        ),
        ("do_not_honor", "Declined by the bank", "The bank declined the card without giving a reason."),
        ("authentication_required", "Needs authentication", "The bank wants the customer to confirm"),
        ("some_future_code", "Some future code", "a code Stripe does not document as a decline"),
    ],
)
def test_a_decline_code_reads_as_a_sentence(code: str, title: str, sentence: str) -> None:
    decline = describe(code)
    assert decline is not None
    assert decline.title == title
    assert sentence in decline.sentence


def test_the_transaction_page_speaks_the_merchants_words(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_transaction: Callable[..., Transaction],
    db: Any,
) -> None:
    user = signed_in("owner")
    transaction = make_transaction(
        org=user.organization,
        amount=12345,
        currency="eur",
        failure_code="insufficient_funds",
        failed_at=datetime(2025, 1, 19, 10, 30, tzinfo=UTC),
        recovered_at=datetime(2025, 1, 20, 9, 5, tzinfo=UTC),
        status="recovered",
    )
    html = page(client, f"/transactions/{transaction.id}")

    assert "minor unit" not in html
    assert "12345" not in html
    assert "<strong>Insufficient funds.</strong> There was not enough money on the card." in html
    assert "Stripe code <code>insufficient_funds</code>" in html  # the code, in small print
    assert "<dt>Recovered</dt><dd>20 Jan 2025, 09:05 UTC</dd>" in html
    assert "<dt>Failed</dt><dd>19 Jan 2025, 10:30 UTC</dd>" in html
    assert BARE_TIME.search(html) is None

    listing = page(client, "/transactions")
    assert 'title="There was not enough money on the card.' in listing
    assert ">Insufficient funds</span>" in listing
    assert SHOWN_TIME.search(listing) is not None and BARE_TIME.search(listing) is None


def test_no_page_points_at_our_docs_folder(client: FlaskClient, signed_in: Callable[..., User]) -> None:
    signed_in("owner")
    for url in ("/settings/api-tokens", "/imports", "/transactions/new", "/settings/recovery"):
        html = page(client, url)
        assert "docs/" not in html, url
        assert "minor unit" not in html, url


@pytest.mark.parametrize(
    ("provider", "badge", "meaning"),
    [
        ("smtp", "Handed to provider", "The provider accepted it; delivery is shown when they confirm."),
        ("twilio", "Handed to provider", "The provider accepted it; delivery is shown when they confirm."),
        ("outbox", "Kept in the outbox", "the customer did not get it"),
    ],
)
def test_a_sent_message_says_it_was_handed_over_not_delivered(
    provider: str, badge: str, meaning: str
) -> None:
    shown = str(message_status("sent", provider))
    assert f">{badge}</span>" in shown
    assert meaning in html_text.unescape(shown)  # the tooltip
    assert meaning in message_status_meaning("sent", provider)  # the sentence on the page


def test_the_outbox_shows_kept_in_the_outbox_with_its_meaning(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_transaction: Callable[..., Transaction],
    db: Any,
) -> None:
    user = signed_in("owner")
    transaction = make_transaction(org=user.organization)
    attempt = RecoveryAttempt(
        organization_id=user.organization_id,
        transaction_id=transaction.id,
        channel="email",
        token="tok_words_" + "x" * 30,
        status="notified",
        expires_at=utcnow() + timedelta(days=7),
    )
    db.session.add(attempt)
    db.session.flush()
    message = Message(
        organization_id=user.organization_id,
        attempt_id=attempt.id,
        transaction_id=transaction.id,
        channel="email",
        recipient="customer@example.com",
        subject="Your payment",
        body_text="Hello",
        status="sent",
        provider="outbox",
        sent_at=utcnow(),
    )
    db.session.add(message)
    db.session.commit()

    for url in ("/outbox", f"/outbox/{message.id}"):
        shown = html_text.unescape(page(client, url))
        assert ">Kept in the outbox</span>" in shown, url
        assert ">sent</span>" not in shown, url
        assert SHOWN_TIME.search(shown) is not None, url
    assert "the customer did not get it" in shown  # the detail page says what it means


def _window_around_now(zone: str) -> str:
    """Quiet hours that hold the current hour in `zone` and end two hours later, on the hour."""
    local = utcnow().astimezone(ZoneInfo(zone))
    start, end = (local - timedelta(hours=1)).hour, (local + timedelta(hours=2)).hour
    return f"{start:02d}:00-{end:02d}:00"


def test_the_bulk_start_says_when_the_first_messages_go(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_org: Callable[..., Organization],
    make_transaction: Callable[..., Transaction],
    db: Any,
) -> None:
    """Customers in Iceland are inside the quiet hours now, customers in Japan (9 hours ahead) are not."""
    quiet = _window_around_now("Atlantic/Reykjavik")
    org = make_org(quiet_hours=quiet)
    user = signed_in("owner", org=org)
    night = [make_transaction(org=org, customer_country="IS", customer_phone=None) for _ in range(3)]
    day = [make_transaction(org=org, customer_country="JP", customer_phone=None) for _ in range(2)]
    started = bulk.create(
        db.session, Actor(org.id, user.email, user.id), [t.id for t in night + day], "email"
    )
    db.session.commit()
    bulk.run(db.session, started.id)
    db.session.refresh(started)

    sends = bulk.first_sends(db.session, started)
    assert (sends.now, sends.after_quiet_hours, sends.quiet_end) == (2, 3, quiet[-5:])
    shown = html_text.unescape(page(client, f"/recoveries/bulk/{started.id}"))
    expected = f"2 now, 3 at {quiet[-5:]} in the customer's time zone (quiet hours)."
    assert f"<strong>First messages:</strong> {expected}" in shown


def test_the_bulk_confirmation_names_the_quiet_hours(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_org: Callable[..., Organization],
    make_transaction: Any,
) -> None:
    org = make_org(quiet_hours="21:00-08:00")
    signed_in("owner", org=org)
    make_transaction(org=org)
    html = page(client, "/transactions")
    assert "messaged now" not in html
    assert "or at 08:00 their time if it is within quiet hours (21:00-08:00) there." in html
