"""Live status: the transaction page and the recoveries page poll a fragment; 204 until something changes.

The browser side (the page really changing when a webhook lands) is in
tests/test_browser.py::test_recovery_journey_email_pay_and_live_status.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from recovery.audit import Actor
from recovery.models import (
    AttemptStatus,
    Message,
    MessageStatus,
    Organization,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.recoveries import lifecycle
from recovery.transactions import live

HX = {"HX-Request": "true"}
POLL_RE = re.compile(r'id="(?:transaction|recoveries)-live"[^>]*hx-get="([^"]+)"')


def poll_url(html: str) -> str | None:
    match = POLL_RE.search(html)
    return match.group(1).replace("&amp;", "&") if match else None


def start(db: Any, transaction: Transaction) -> Any:
    started = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id), now=utcnow()
    )
    db.session.commit()
    return started.attempt


def recover(db: Any, transaction: Transaction) -> None:
    """What the webhook handler does to the rows the page shows (the handler has its own tests)."""
    transaction = db.session.get(Transaction, transaction.id)
    for attempt in transaction.attempts:
        if attempt.is_active:
            attempt.transition(AttemptStatus.COMPLETED)
            attempt.completed_at = utcnow()
            attempt.next_send_at = None
    transaction.transition(TransactionStatus.RECOVERED)
    transaction.recovered_at = utcnow()
    db.session.commit()


def test_the_transaction_page_polls_and_gets_204_while_nothing_changes(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any
) -> None:
    signed_in("viewer", org=org)
    transaction = make_transaction(org)

    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)
    url = poll_url(page)

    assert url is not None and url.startswith(f"/transactions/{transaction.id}/live?v=")
    assert f'hx-trigger="every {live.POLL_SECONDS}s"' in page
    assert 'hx-swap="outerHTML"' in page
    first = client.get(url, headers=HX)
    assert first.status_code == 204 and first.data == b""
    assert client.get(url, headers=HX).status_code == 204


def test_a_change_returns_the_new_fragment_with_its_new_version(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any
) -> None:
    signed_in("viewer", org=org)
    transaction = make_transaction(org, transaction_ref="LIVE-1")
    url = poll_url(client.get(f"/transactions/{transaction.id}").get_data(as_text=True))
    assert url is not None

    start(db, transaction)
    changed = client.get(url, headers=HX)

    assert changed.status_code == 200
    html = changed.get_data(as_text=True)
    assert html.lstrip().startswith('<div id="transaction-live"')
    assert "<html" not in html and "<nav" not in html  # a fragment, not the page
    assert '<span class="status status-recovering">recovering</span>' in html
    assert "Recovery started" in html  # the timeline
    assert "A recovery is running" in html  # the recovery panel
    new_url = poll_url(html)
    assert new_url is not None and new_url != url
    assert client.get(new_url, headers=HX).status_code == 204


def test_the_fragment_of_a_recovered_transaction_stops_polling(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any
) -> None:
    signed_in("viewer", org=org)
    transaction = make_transaction(org)
    start(db, transaction)
    url = poll_url(client.get(f"/transactions/{transaction.id}").get_data(as_text=True))
    assert url is not None

    recover(db, transaction)
    html = client.get(url, headers=HX).get_data(as_text=True)

    assert '<span class="status status-recovered">recovered</span>' in html
    assert "hx-trigger" not in html and poll_url(html) is None
    assert "hx-trigger" not in client.get(f"/transactions/{transaction.id}").get_data(as_text=True)


@pytest.mark.parametrize("change", ["message", "message_status", "contact", "cancel"])
def test_the_fingerprint_follows_what_the_page_shows(
    db: Any, org: Organization, make_transaction: Any, change: str
) -> None:
    transaction = make_transaction(org, customer_phone="+14155550123")
    attempt = start(db, transaction)
    if change == "message_status":
        message = Message(
            organization_id=org.id,
            attempt_id=attempt.id,
            transaction_id=transaction.id,
            channel="email",
            recipient="a@example.com",
            status=MessageStatus.SENDING,
        )
        db.session.add(message)
        db.session.commit()
    before = live.transaction_fingerprint(db.session, transaction.id)
    assert live.transaction_fingerprint(db.session, transaction.id) == before

    if change == "message":
        db.session.add(
            Message(
                organization_id=org.id,
                attempt_id=attempt.id,
                transaction_id=transaction.id,
                channel="sms",
                recipient="+14155550123",
            )
        )
    elif change == "message_status":
        message.transition(MessageStatus.SENT)
    elif change == "contact":
        transaction.customer_name = "Ana Souza"
    else:
        lifecycle.cancel_recovery(db.session, attempt, Actor.system(org.id), now=utcnow())
    db.session.commit()

    assert live.transaction_fingerprint(db.session, transaction.id) != before


def test_polling_another_organizations_transaction_is_404(
    client: FlaskClient, signed_in: Any, make_org: Any, make_transaction: Any
) -> None:
    signed_in("owner")
    theirs = make_transaction(make_org(name="Their Merchant"))

    assert client.get(f"/transactions/{theirs.id}/live?v=x", headers=HX).status_code == 404


def test_polling_without_a_session_goes_to_sign_in(
    client: FlaskClient, org: Organization, make_transaction: Any
) -> None:
    transaction = make_transaction(org)

    response = client.get(f"/transactions/{transaction.id}/live?v=x", headers=HX)

    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_the_recoveries_page_polls_its_table(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any
) -> None:
    signed_in("viewer", org=org)
    attempt = start(db, make_transaction(org, transaction_ref="RUN-1"))
    page = client.get("/recoveries").get_data(as_text=True)
    url = poll_url(page)
    assert url is not None and url.startswith("/recoveries?v=")
    assert client.get(url, headers=HX).status_code == 204

    recover(db, attempt.transaction)
    changed = client.get(url, headers=HX)

    assert changed.status_code == 200
    html = changed.get_data(as_text=True)
    assert html.lstrip().startswith('<div id="recoveries-live"')
    assert "<html" not in html
    assert '<span class="status status-completed">completed</span>' in html
    assert poll_url(html) != url


def test_the_recoveries_poll_keeps_the_status_filter(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any
) -> None:
    signed_in("viewer", org=org)
    start(db, make_transaction(org))

    url = poll_url(client.get("/recoveries?status=scheduled").get_data(as_text=True))

    assert url is not None and "status=scheduled" in url
