"""The failed-transactions list: status tabs, search, filters, order, cursor pagination and its count."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import insert, select

from recovery.models import (
    Organization,
    Transaction,
    TransactionStatus,
    User,
)
from recovery.models.transaction import STATUS_LABELS
from tests.fixtures.transactions import get

BASE_TIME = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
ROW_LINK = re.compile(r'<a href="/transactions/(\d+)">([^<]+)</a>')
NEXT = re.compile(r'<a class="button" rel="next" href="([^"]+)"')
PREV = re.compile(r'<a class="button" rel="prev" href="([^"]+)"')
STALE_CURSOR = "That page link is no longer valid; showing the first page."


def bulk_insert(db: Any, org: Organization, count: int, **overrides: Any) -> None:
    """Insert `count` rows in one statement; `overrides` values may be callables of the index."""
    now = datetime.now(UTC)
    rows = []
    for i in range(count):
        row: dict[str, Any] = {
            "organization_id": org.id,
            "transaction_ref": f"BULK-{org.id}-{i:05d}",
            "amount": 1000 + i,
            "currency": "usd",
            "status": TransactionStatus.FAILED,
            "source": "api",
            "meta": {},
            "failed_at": BASE_TIME - timedelta(minutes=i),
            "created_at": now,
            "updated_at": now,
        }
        for key, value in overrides.items():
            row[key] = value(i) if callable(value) else value
        rows.append(row)
    db.session.execute(insert(Transaction), rows)
    db.session.commit()


def refs(page: str) -> list[str]:
    """The transaction references in the list, in the order shown."""
    return [ref for _, ref in ROW_LINK.findall(page)]


def link(pattern: re.Pattern[str], page: str) -> str | None:
    match = pattern.search(page)
    return html.unescape(match.group(1)) if match else None


def cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# --- the list ----------------------------------------------------------------


@pytest.mark.parametrize("status", TransactionStatus.ALL)
def test_each_status_tab_shows_only_that_status(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_transaction: Callable[..., Transaction],
    status: str,
) -> None:
    user = signed_in("viewer")
    for s in TransactionStatus.ALL:
        make_transaction(org=user.organization, transaction_ref=f"REF-{s}", status=s)

    page = get(client, "/transactions", status=status)

    assert refs(page) == [f"REF-{status}"]
    # In staff's words: `cancelled` is a closed transaction (see Transaction).
    assert f'aria-current="page">{STATUS_LABELS[status].capitalize()}</a>' in page
    everything = get(client, "/transactions")
    assert sorted(refs(everything)) == sorted(f"REF-{s}" for s in TransactionStatus.ALL)


def test_search_by_the_start_of_a_ref(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    make_transaction(org=user.organization, transaction_ref="ORD-1001")
    make_transaction(org=user.organization, transaction_ref="ORD-10011")
    make_transaction(org=user.organization, transaction_ref="XYZ-1")

    assert refs(get(client, "/transactions", q="ORD-10011")) == ["ORD-10011"]
    assert sorted(refs(get(client, "/transactions", q="  ord-1001  "))) == ["ORD-1001", "ORD-10011"]
    page = get(client, "/transactions", q="RD-1001")  # the start of a reference, not any part of it
    assert refs(page) == []
    assert "No transactions match" in page


def test_search_by_email_ignores_case_of_the_input(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    make_transaction(org=user.organization, transaction_ref="T-ANN", customer_email="ann@example.com")
    make_transaction(org=user.organization, transaction_ref="T-BOB", customer_email="bob@example.com")

    assert refs(get(client, "/transactions", q="ann@example.com")) == ["T-ANN"]
    assert refs(get(client, "/transactions", q="ANN@Example.COM")) == ["T-ANN"]
    assert refs(get(client, "/transactions", q="nobody@example.com")) == []


@pytest.mark.parametrize("query", ["+14155550123", "+1 415 555 0123", "+1 (415) 555-0123", "0014155550123"])
def test_search_by_phone_in_international_form(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_transaction: Callable[..., Transaction],
    query: str,
) -> None:
    user = signed_in("viewer")
    make_transaction(org=user.organization, transaction_ref="T-PHONE", customer_phone="+14155550123")
    make_transaction(org=user.organization, transaction_ref="T-OTHER", customer_phone="+442079460958")

    assert refs(get(client, "/transactions", q=query)) == ["T-PHONE"]


def test_currency_filter(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    for currency in ("usd", "eur", "jpy"):
        make_transaction(org=user.organization, transaction_ref=f"T-{currency}", currency=currency)

    assert refs(get(client, "/transactions", currency="eur")) == ["T-eur"]
    assert refs(get(client, "/transactions", currency="JPY")) == ["T-jpy"]
    assert refs(get(client, "/transactions", currency="gbp")) == []


def test_date_range_includes_both_ends(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    times = {
        "BEFORE": datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC),
        "FIRST-DAY": datetime(2025, 1, 1, 0, 0, tzinfo=UTC),
        "MIDDLE": datetime(2025, 1, 5, 12, 0, tzinfo=UTC),
        "LAST-DAY": datetime(2025, 1, 10, 23, 59, 59, 999999, tzinfo=UTC),
        "AFTER": datetime(2025, 1, 11, 0, 0, tzinfo=UTC),
    }
    for ref, at in times.items():
        make_transaction(org=user.organization, transaction_ref=ref, failed_at=at)

    page = get(client, "/transactions", date_from="2025-01-01", date_to="2025-01-10")
    assert refs(page) == ["LAST-DAY", "MIDDLE", "FIRST-DAY"]
    assert refs(get(client, "/transactions", date_from="2025-01-10")) == ["AFTER", "LAST-DAY"]
    assert refs(get(client, "/transactions", date_to="2025-01-01")) == ["FIRST-DAY", "BEFORE"]
    assert refs(get(client, "/transactions", date_from="2025-01-05", date_to="2025-01-05")) == ["MIDDLE"]


@pytest.mark.parametrize(
    ("sort", "order", "expected"),
    [
        ("date", "desc", ["NEWEST", "MID", "OLDEST"]),
        ("date", "asc", ["OLDEST", "MID", "NEWEST"]),
        ("amount", "desc", ["OLDEST", "NEWEST", "MID"]),
        ("amount", "asc", ["MID", "NEWEST", "OLDEST"]),
    ],
)
def test_sort_by_date_and_amount(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_transaction: Callable[..., Transaction],
    sort: str,
    order: str,
    expected: list[str],
) -> None:
    user = signed_in("viewer")
    org = user.organization
    make_transaction(org=org, transaction_ref="OLDEST", amount=9000, failed_at=BASE_TIME - timedelta(days=2))
    make_transaction(org=org, transaction_ref="MID", amount=100, failed_at=BASE_TIME - timedelta(days=1))
    make_transaction(org=org, transaction_ref="NEWEST", amount=5000, failed_at=BASE_TIME)

    # Amounts sort within one currency (all three are USD).
    assert refs(get(client, "/transactions", sort=sort, order=order, currency="usd")) == expected


def test_default_order_is_newest_first(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    make_transaction(org=user.organization, transaction_ref="OLD", failed_at=BASE_TIME - timedelta(days=1))
    make_transaction(org=user.organization, transaction_ref="NEW", failed_at=BASE_TIME)
    assert refs(get(client, "/transactions")) == ["NEW", "OLD"]


def walk(client: FlaskClient, first_url: str) -> tuple[list[list[str]], list[str]]:
    """Follow "Next" to the end; return the pages and the URL of each."""
    pages, urls, url = [], [], first_url
    while url:
        page = get(client, url)
        pages.append(refs(page))
        urls.append(url)
        url = link(NEXT, page)
        assert len(pages) < 50, "pagination does not end"
    return pages, urls


@pytest.mark.parametrize(
    ("sort", "order"),
    [("amount", "asc"), ("amount", "desc"), ("date", "desc"), ("date", "asc")],
)
def test_cursor_pagination_walks_every_row_once_with_ties_and_back(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, sort: str, order: str
) -> None:
    user = signed_in("viewer")
    # 137 rows, only three distinct amounts and four distinct times: pages split inside ties.
    bulk_insert(
        db,
        user.organization,
        137,
        amount=lambda i: (500, 1000, 2000)[i % 3],
        failed_at=lambda i: BASE_TIME - timedelta(hours=i % 4),
    )
    expected_rows = db.session.execute(
        select(Transaction.transaction_ref, Transaction.amount, Transaction.failed_at, Transaction.id)
    ).all()
    key = (lambda r: (r.amount, r.id)) if sort == "amount" else (lambda r: (r.failed_at, r.id))
    expected = [r.transaction_ref for r in sorted(expected_rows, key=key, reverse=order == "desc")]

    pages, urls = walk(client, f"/transactions?sort={sort}&order={order}&currency=usd")

    assert [len(p) for p in pages] == [50, 50, 37]
    seen = [ref for page in pages for ref in page]
    assert seen == expected  # every row, once, in order: no duplicates, no gaps
    assert len(set(seen)) == 137

    # And back from the last page with "Previous", page by page.
    page = get(client, urls[-1])
    for previous in reversed(pages[:-1]):
        prev_url = link(PREV, page)
        assert prev_url, "no Previous link"
        page = get(client, prev_url)
        assert refs(page) == previous
        assert link(NEXT, page), "a page reached by Previous must offer Next"
    assert link(PREV, page) is None  # back at the first page


def test_first_page_has_no_previous_and_exactly_50_rows(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    user = signed_in("viewer")
    bulk_insert(db, user.organization, 51)
    page = get(client, "/transactions")
    assert len(refs(page)) == 50
    assert link(PREV, page) is None
    last = get(client, link(NEXT, page) or "")
    assert len(refs(last)) == 1
    assert link(NEXT, last) is None


def test_pagination_keeps_the_filters(client: FlaskClient, signed_in: Callable[..., User], db: Any) -> None:
    user = signed_in("viewer")
    bulk_insert(db, user.organization, 120, currency=lambda i: "eur" if i % 2 else "usd")
    pages, urls = walk(client, "/transactions?currency=eur&sort=amount&order=asc")
    assert [len(p) for p in pages] == [50, 10]
    assert all("currency=eur" in url for url in urls)
    shown = {ref for page in pages for ref in page}
    assert shown == {f"BULK-{user.organization.id}-{i:05d}" for i in range(1, 120, 2)}


@pytest.mark.parametrize(
    ("params"),
    [
        {"after": "garbage"},
        {"after": "!!!not-base64!!!"},
        {"before": "e30"},  # {}
        {"after": cursor([1])},
        {"after": cursor(None)},
        {"after": cursor("text")},
        {"after": cursor(["not a date", 5])},
        {"after": cursor(["2025-01-15T12:00:00+00:00", "5"])},
        {"after": cursor(["2025-01-15T12:00:00", 5])},  # a naive time
        {"after": cursor([1000, 5]), "sort": "date"},  # an amount cursor on a date sort
        {"after": cursor(["2025-01-15T12:00:00+00:00", 5]), "sort": "amount"},
        {"after": cursor([True, 5]), "sort": "amount"},
        {"after": cursor([1.5, 5]), "sort": "amount"},
        {"after": cursor([10**30, 5]), "sort": "amount"},
        {"after": cursor([1000, 10**30]), "sort": "amount"},
        {"before": cursor(["2025-01-15T12:00:00+00:00", -(10**30)])},
        {"after": base64.urlsafe_b64encode(b"\xff\xfe").decode()},
        {"after": base64.urlsafe_b64encode(b"[" * 1000).decode()},  # exhausts json's recursion
        {"before": cursor(["x" * 300, 5])},
    ],
)
def test_forged_cursor_shows_the_first_page_with_a_message(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, params: dict[str, str]
) -> None:
    user = signed_in("viewer")
    bulk_insert(db, user.organization, 60)
    params = {**params, "currency": "usd"}  # amounts sort within one currency
    first = refs(get(client, "/transactions", sort=params.get("sort", "date"), currency="usd"))

    response = client.get("/transactions", query_string=params)

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert STALE_CURSOR in page
    assert refs(page) == first


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "bogus"}, "Unknown status &#39;bogus&#39;."),
        ({"currency": "12345"}, "Use a three-letter currency code."),
        ({"currency": "u$"}, "Use a three-letter currency code."),
        ({"date_from": "notadate"}, "Use a date like 2025-01-31."),
        ({"date_to": "2025-02-30"}, "Use a date like 2025-01-31."),
        ({"date_to": "9999-12-31"}, "Use a date like 2025-01-31."),
        ({"date_from": "0001-01-01"}, "Use a date like 2025-01-31."),
        ({"sort": "password_hash", "order": "sideways"}, None),
    ],
)
def test_bad_filter_values_answer_200_with_a_message(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_transaction: Callable[..., Transaction],
    params: dict[str, str],
    message: str | None,
) -> None:
    user = signed_in("viewer")
    make_transaction(org=user.organization, transaction_ref="VISIBLE", failed_at=BASE_TIME)

    response = client.get("/transactions", query_string=params)

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    if message:
        assert message in page
    # The bad value is dropped, not applied: the row is still listed.
    assert refs(page) == ["VISIBLE"]


def test_count_is_capped_over_1000_rows(client: FlaskClient, signed_in: Callable[..., User], db: Any) -> None:
    user = signed_in("viewer")
    bulk_insert(db, user.organization, 1001)
    page = get(client, "/transactions")
    assert "1,000+ transactions" in page
    assert len(refs(page)) == 50


def test_count_is_exact_up_to_1000_rows(client: FlaskClient, signed_in: Callable[..., User], db: Any) -> None:
    user = signed_in("viewer")
    bulk_insert(db, user.organization, 1000, status=lambda i: "failed" if i < 999 else "recovered")
    assert "1,000 transactions" in get(client, "/transactions")
    assert "999 transactions" in get(client, "/transactions", status="failed")
    assert "1 transaction<" in get(client, "/transactions", status="recovered")


def test_another_organizations_rows_never_appear(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_org: Callable[..., Organization],
    make_transaction: Callable[..., Transaction],
) -> None:
    user = signed_in("viewer")
    other = make_org()
    make_transaction(org=user.organization, transaction_ref="MINE", customer_email="shared@example.com")
    theirs = make_transaction(
        org=other,
        transaction_ref="THEIRS",
        customer_email="shared@example.com",
        customer_phone="+14155550123",
        currency="eur",
        status="recovered",
    )

    for params in (
        {},
        {"q": "THEIRS"},
        {"q": "shared@example.com"},
        {"q": "+14155550123"},
        {"currency": "eur"},
        {"status": "recovered"},
        {"sort": "amount", "order": "asc"},
    ):
        page = get(client, "/transactions", **params)
        assert "THEIRS" not in refs(page), params
        assert f'/transactions/{theirs.id}"' not in page
    assert refs(get(client, "/transactions", q="shared@example.com")) == ["MINE"]
    assert "1 transaction<" in get(client, "/transactions")


def test_amounts_shown_in_the_currencys_format(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    org = user.organization
    make_transaction(org=org, transaction_ref="T-USD", amount=5000, currency="usd")
    make_transaction(org=org, transaction_ref="T-JPY", amount=5000, currency="jpy")
    make_transaction(org=org, transaction_ref="T-BHD", amount=5000, currency="bhd")
    make_transaction(org=org, transaction_ref="T-EUR", amount=123456, currency="eur")

    page = get(client, "/transactions")
    for shown in ("$50.00", "¥5,000", "BHD5.000", "€1,234.56"):
        assert f'class="num">{shown}</td>' in page


def test_htmx_request_gets_only_the_table(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    make_transaction(org=user.organization, transaction_ref="T-HX")
    response = client.get("/transactions", headers={"HX-Request": "true"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert refs(page) == ["T-HX"]
    assert "<html" not in page


def test_empty_states(client: FlaskClient, signed_in: Callable[..., User]) -> None:
    signed_in("operator")
    assert "No failed transactions yet" in get(client, "/transactions")
    page = get(client, "/transactions", q="nothing")
    assert "No transactions match" in page
    assert "clear the filters" in page


def test_list_requires_sign_in(client: FlaskClient) -> None:
    response = client.get("/transactions")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]
