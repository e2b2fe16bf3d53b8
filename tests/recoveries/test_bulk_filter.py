"""Bulk start of every transaction the list's filter matches ("Select all N matching this filter")."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from recovery.models import (
    AuditEvent,
    Organization,
    Transaction,
    utcnow,
)
from recovery.queue import get_queue
from recovery.recoveries import bulk
from tests.recoveries.test_bulk_start import attempts, progress_url


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    return make_org(name="Acme Shop", excluded_failure_codes="stolen_card", quiet_hours="")


def insert_transactions(
    db: Any, org: Organization, count: int, prefix: str = "MANY", **overrides: Any
) -> None:
    """Insert `count` reachable failed transactions in one statement (faster than the factory)."""
    now = utcnow()
    rows = [
        {
            "organization_id": org.id,
            "transaction_ref": f"{prefix}-{org.id}-{i:05d}",
            "amount": 1000 + i,
            "currency": "usd",
            "status": "failed",
            "source": "api",
            "meta": {},
            "customer_email": f"many{i}@example.com",
            "failed_at": now - timedelta(minutes=i),
            "created_at": now,
            "updated_at": now,
            **overrides,
        }
        for i in range(count)
    ]
    db.session.execute(sa.insert(Transaction), rows)
    db.session.commit()


def flashed_after(client: FlaskClient, response: Any, back: str = "/transactions") -> str:
    """Follow the refusal's redirect back to the list and return the page (with its flash)."""
    assert response.status_code == 303 and response.headers["Location"] == back, response.data
    return client.get(back).get_data(as_text=True)


def test_filter_scope_starts_exactly_the_matching_transactions_of_the_organization(
    client: FlaskClient,
    db: Any,
    signed_in: Any,
    org: Organization,
    make_org: Any,
    make_transaction: Any,
    work: Callable[[], None],
) -> None:
    user = signed_in("operator", org=org)
    day = datetime(2025, 3, 10, 12, tzinfo=UTC)
    matching = [make_transaction(org, currency="usd", failed_at=day, amount=100 + i) for i in range(57)]
    other_currency = make_transaction(org, currency="eur", failed_at=day)
    other_status = make_transaction(org, currency="usd", failed_at=day, status="recovered")
    too_early = make_transaction(org, currency="usd", failed_at=day - timedelta(days=30))
    other_org = make_org()
    theirs = [make_transaction(other_org, currency="usd", failed_at=day) for _ in range(3)]
    form = {
        "scope": "filter",
        "channel": "email",
        # As the list's query string has them; the list lowercases the currency itself.
        "status": "failed",
        "currency": "USD",
        "date_from": "2025-03-01",
        "date_to": "2025-03-31",
        "sort": "amount",
        "order": "asc",
        # Ignored with scope=filter: the checked rows of one page, and a page cursor.
        "ids": [other_currency.id],
        "after": "bm90LWEtY3Vyc29y",
    }

    url = progress_url(client.post("/recoveries/bulk", data=form))

    queued = client.get(url).get_data(as_text=True)
    assert "Starting 57 recoveries" in queued
    assert re.search(
        r"matched status failed, currency USD, failed from 2025-03-01, failed to 2025-03-31\.", queued
    )
    work()

    started = attempts(db, org)
    assert sorted(a.transaction_id for a in started) == sorted(t.id for t in matching)
    assert {a.channel for a in started} == {"email"}
    for untouched in (other_currency, other_status, too_early, *theirs):
        assert db.session.get(Transaction, untouched.id).status == untouched.status
    assert attempts(db, other_org) == []
    done = client.get(url).get_data(as_text=True)
    assert '<dd id="bulk-started">57</dd>' in done and '<dd id="bulk-refused">0</dd>' in done
    summary = db.session.scalar(
        sa.select(AuditEvent).where(
            AuditEvent.action == "recovery.bulk_started", AuditEvent.actor_user_id == user.id
        )
    )
    assert summary.details == {
        "requested": 57,
        "started": 57,
        "refused": 0,
        "channel": "email",
        "filter": {
            "status": "failed",
            "currency": "usd",
            "date_from": "2025-03-01",
            "date_to": "2025-03-31",
            "sort": "amount",
            "order": "asc",
        },
    }


def test_filter_scope_goes_through_the_per_transaction_rules(
    client: FlaskClient,
    db: Any,
    signed_in: Any,
    org: Organization,
    make_transaction: Any,
    work: Callable[[], None],
) -> None:
    signed_in("operator", org=org)
    good = make_transaction(org)
    excluded = make_transaction(org, transaction_ref="EXCLUDED-2", failure_code="stolen_card")

    url = progress_url(client.post("/recoveries/bulk", data={"scope": "filter", "channel": "any"}))
    work()

    assert [a.transaction_id for a in attempts(db, org)] == [good.id]
    done = client.get(url).get_data(as_text=True)
    assert "matched the unfiltered list" in done
    assert "EXCLUDED-2" in done and "Failure code stolen_card is excluded" in done
    assert excluded.id not in {a.transaction_id for a in attempts(db, org)}


@pytest.mark.parametrize(
    ("cap", "count_cap", "message"),
    [
        (5, 100_000, "7 transactions match; narrow the filter to at most 5."),
        (5, 6, "More than 6 transactions match; narrow the filter to at most 5."),
        (7, 100_000, None),  # exactly the limit is allowed
    ],
)
def test_a_filter_matching_more_than_the_limit_is_refused_not_truncated(
    client: FlaskClient,
    db: Any,
    signed_in: Any,
    org: Organization,
    make_org: Any,
    monkeypatch: Any,
    cap: int,
    count_cap: int,
    message: str | None,
) -> None:
    signed_in("operator", org=org)
    insert_transactions(db, org, 7)
    insert_transactions(db, make_org(), 20)  # another organization's rows are not counted
    monkeypatch.setattr(bulk, "MAX_TRANSACTIONS", cap)
    monkeypatch.setattr(bulk, "REFUSAL_COUNT_CAP", count_cap)

    response = client.post(
        "/recoveries/bulk",
        data={"scope": "filter", "status": "failed", "channel": "any", "next": "/transactions?status=failed"},
    )

    if message is None:
        assert "Starting 7 recoveries" in client.get(progress_url(response)).get_data(as_text=True)
        return
    assert message in flashed_after(client, response, "/transactions?status=failed")
    assert get_queue().count == 0 and attempts(db, org) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"status": "bogus"}, "Unknown status &#39;bogus&#39;."),
        ({"currency": "dollars"}, "Use a three-letter currency code."),
        ({"date_from": "2025-02-30"}, "Use a date like 2025-01-31."),
        ({"date_to": "0001-01-01"}, "Use a date like 2025-01-31."),
        ({"status": "refunded"}, "No transactions match this filter."),
    ],
)
def test_a_bad_filter_is_refused_with_the_lists_own_message(
    client: FlaskClient,
    db: Any,
    signed_in: Any,
    org: Organization,
    make_transaction: Any,
    args: dict[str, str],
    message: str,
) -> None:
    signed_in("operator", org=org)
    make_transaction(org)

    response = client.post("/recoveries/bulk", data={"scope": "filter", "channel": "any", **args})

    page = flashed_after(client, response)
    assert message in page
    assert get_queue().count == 0 and attempts(db, org) == []
    if message != "No transactions match this filter.":
        # The list says the same of the same value.
        listed = client.get("/transactions", query_string=args).get_data(as_text=True)
        assert message in listed


def test_viewers_cannot_start_a_filter_batch(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any
) -> None:
    signed_in("viewer", org=org)
    make_transaction(org)

    response = client.post("/recoveries/bulk", data={"scope": "filter", "status": "failed", "channel": "any"})

    assert response.status_code == 403
    assert get_queue().count == 0 and attempts(db, org) == []


SCOPE_LABEL = re.compile(r"Select all ([\d,]+\+?) matching this filter")


def scope_inputs(page: str) -> dict[str, str]:
    """The hidden filter inputs the "all matching" control sends, by name."""
    block = re.search(r"<div class=\"bulk-scope\" data-bulk-scope hidden>(.*?)</div>", page, re.S)
    assert block, "no 'select all matching' control"
    assert 'name="scope" value="filter"' in block.group(1)
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', block.group(1)))


def test_the_list_offers_all_matching_when_more_match_than_a_page(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization
) -> None:
    signed_in("operator", org=org)
    insert_transactions(db, org, 51)
    insert_transactions(db, org, 2, prefix="EUR", currency="eur")

    page = client.get("/transactions?status=failed&currency=USD&date_from=2000-01-01").get_data(as_text=True)

    assert SCOPE_LABEL.findall(page) == ["51"]
    # The list's filter as the list parsed it: what the user sees is what is sent.
    assert scope_inputs(page) == {
        "status": "failed",
        "currency": "usd",
        "date_from": "2000-01-01",
        "sort": "date",
        "order": "desc",
    }
    # The second page offers it too: "select all" there is also a part of the 51.
    second = re.search(r'rel="next" href="([^"]+)"', page)
    assert second
    assert SCOPE_LABEL.findall(client.get(second.group(1).replace("&amp;", "&")).get_data(as_text=True)) == [
        "51"
    ]


@pytest.mark.parametrize(
    ("role", "rows", "url", "label"),
    [
        ("operator", 50, "/transactions", None),  # all on the page: the page's own "select all" does it
        ("operator", 1001, "/transactions", "1,001"),  # past the list's cap: counted exactly
        ("operator", 60, "/transactions?currency=dollars", None),  # the list dropped a bad filter
        ("operator", 60, "/transactions?after=garbage", "60"),  # a stale cursor is no filter error
        ("viewer", 60, "/transactions", None),
    ],
)
def test_when_the_list_offers_all_matching(
    client: FlaskClient,
    db: Any,
    signed_in: Any,
    org: Organization,
    role: str,
    rows: int,
    url: str,
    label: str | None,
) -> None:
    signed_in(role, org=org)
    insert_transactions(db, org, rows)

    page = client.get(url).get_data(as_text=True)
    # Past the list's capped count ("1,000+") the choice comes with the exact count, asked for apart.
    exact = re.search(r'hx-get="(/transactions/matching[^"]*)"', page)
    if exact:
        page += client.get(exact.group(1).replace("&amp;", "&")).get_data(as_text=True)

    assert SCOPE_LABEL.findall(page) == ([label] if label else [])
    assert ('name="scope"' in page) == bool(label)
