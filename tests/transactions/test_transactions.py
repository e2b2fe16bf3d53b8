"""The failed-transactions dashboard: list, filters, cursor pagination, detail, create, edit."""

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
from sqlalchemy import func, insert, select

from recovery.models import (
    AuditEvent,
    Organization,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    User,
)
from recovery.models.transaction import STATUS_LABELS

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


def get(client: FlaskClient, url: str, **params: Any) -> str:
    response = client.get(url, query_string=params or None)
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def transaction_audits(db: Any) -> int:
    """Audit events about transactions (signing in writes its own)."""
    return db.session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.action.startswith("transaction."))
    )


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


# --- the detail page -----------------------------------------------------------


def test_detail_shows_every_field(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    transaction = make_transaction(
        org=user.organization,
        transaction_ref="TXN-FULL",
        amount=12345,
        currency="eur",
        status="recovering",
        failure_code="insufficient_funds",
        failure_message="Your card has insufficient funds.",
        customer_name="Zoë Lee",
        customer_email="zoe@example.com",
        customer_phone="+442079460958",
        customer_country="GB",
        customer_locale="en-GB",
        meta={"order_id": "ORD-123"},
        stripe_payment_intent_id="pi_3MtwBwLkdIwHu7ix28a3tqPa",
        stripe_checkout_session_id="cs_test_a1b2c3",
        stripe_customer_id="cus_NffrFeUfNV2Hib",
        payment_link_url="https://buy.stripe.com/test_123",
        failed_at=datetime(2025, 1, 19, 10, 30, tzinfo=UTC),
    )

    page = get(client, f"/transactions/{transaction.id}")

    for shown in (
        "TXN-FULL",
        "€123.45",
        '€123.45 <span class="sub">EUR</span>',
        "recovering",
        "insufficient_funds",
        "Your card has insufficient funds.",
        "Zoë Lee",
        "zoe@example.com",
        "+442079460958",
        "<dd>GB</dd>",
        "<dd>en-GB</dd>",
        "<dt><bdi>order_id</bdi></dt><dd><bdi>ORD-123</bdi></dd>",
        "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "cs_test_a1b2c3",
        "cus_NffrFeUfNV2Hib",
        'href="https://buy.stripe.com/test_123"',
        "19 Jan 2025, 10:30 UTC",
        "Payment failed",
    ):
        assert shown in page, shown
    assert "No recovery has been started" in page


def test_detail_of_another_organizations_transaction_is_404(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_transaction: Callable[..., Transaction],
) -> None:
    signed_in("owner")
    theirs = make_transaction(transaction_ref="THEIRS")
    for url in (
        f"/transactions/{theirs.id}",
        f"/transactions/{theirs.id}/edit",
        "/transactions/by-ref/THEIRS",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "THEIRS" not in response.get_data(as_text=True)


def test_by_ref_redirects_to_the_detail(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    transaction = make_transaction(org=user.organization, transaction_ref="REF-9")
    response = client.get("/transactions/by-ref/REF-9")
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/transactions/{transaction.id}")


def test_detail_lists_recovery_attempts(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_transaction: Callable[..., Transaction],
    db: Any,
) -> None:
    user = signed_in("viewer")
    transaction = make_transaction(org=user.organization, transaction_ref="T-ATT", status="recovering")
    db.session.add(
        RecoveryAttempt(
            organization_id=user.organization_id,
            transaction_id=transaction.id,
            channel="sms",
            token="tok_" + "a" * 40,
            status="notified",
            expires_at=datetime(2030, 1, 8, 9, 0, tzinfo=UTC),
            max_retries=3,
            messages_sent=2,
        )
    )
    db.session.commit()

    page = get(client, f"/transactions/{transaction.id}")

    assert "No recovery has been started" not in page
    assert '<td data-label="Channel">sms</td>' in page
    assert '<span class="status status-notified">notified</span>' in page
    assert "2 / 4" in page  # messages sent of the first send plus retries
    assert "8 Jan 2030, 09:00 UTC" in page
    assert "Recovery started" in page  # also on the timeline


# --- create ------------------------------------------------------------------

FORM = {
    "transaction_ref": "TXN-NEW-1",
    "amount": "50",
    "currency": "USD",
    "customer_name": "Ann Lee",
    "customer_email": "Ann@Example.com",
    "customer_phone": "+1 415 555 0123",
    "customer_country": "us",
    "customer_locale": "en-US",
    "failure_code": "card_declined",
    "failure_message": "Declined by the bank.",
    "failed_at": "2025-01-19",
    "metadata": '{"order_id": "ORD-7"}',
}


def test_create_by_form(client: FlaskClient, signed_in: Callable[..., User], db: Any) -> None:
    user = signed_in("operator")

    response = client.post("/transactions/new", data=FORM)

    assert response.status_code == 302
    transaction = db.session.scalar(select(Transaction))
    assert response.headers["Location"].endswith(f"/transactions/{transaction.id}")
    assert transaction.organization_id == user.organization_id
    assert transaction.transaction_ref == "TXN-NEW-1"
    assert transaction.amount == 5000  # "50" on the form is $50.00: major units
    assert transaction.currency == "usd"
    assert transaction.status == "failed"
    assert transaction.source == "form"
    assert transaction.customer_email == "ann@example.com"
    assert transaction.customer_phone == "+14155550123"
    assert transaction.customer_country == "US"
    assert transaction.failed_at == datetime(2025, 1, 19, tzinfo=UTC)
    assert transaction.meta == {"order_id": "ORD-7"}
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action.startswith("transaction.")))
    assert (event.action, event.transaction_id, event.actor_user_id) == (
        "transaction.created",
        transaction.id,
        user.id,
    )

    page = get(client, response.headers["Location"])
    assert "Transaction TXN-NEW-1 created for $50.00." in page
    assert re.search(r"<strong>Created</strong>.*?by " + re.escape(user.email), page, re.S)


@pytest.mark.parametrize(
    ("amount", "currency", "stored"),
    [
        ("50", "usd", 5000),
        ("19.99", "usd", 1999),
        ("0.29", "usd", 29),
        ("5000", "jpy", 5000),
        ("1.5", "bhd", 1500),
    ],
)
def test_create_amount_is_in_major_units(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, amount: str, currency: str, stored: int
) -> None:
    signed_in("operator")
    response = client.post(
        "/transactions/new", data={"transaction_ref": "T-1", "amount": amount, "currency": currency}
    )
    assert response.status_code == 302
    assert db.session.scalar(select(Transaction.amount)) == stored


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("transaction_ref", "", "This field is required."),
        ("transaction_ref", "has spaces", "Use letters, digits"),
        ("transaction_ref", "x" * 65, "At most 64 characters"),
        ("amount", "", "Amount is required."),
        ("amount", "0", "Amount must be greater than zero."),
        ("amount", "-5", "Amount must be greater than zero."),
        ("amount", "abc", "is not a number"),
        ("amount", "1.001", "USD amounts take at most 2 decimals"),
        ("amount", "1e5", "is not a number"),
        ("currency", "", "Currency is required"),
        ("currency", "ABC", "is not a known ISO 4217 currency code."),
        ("customer_email", "not-an-email", "must have an @-sign"),
        ("customer_phone", "12345", "is not a valid phone number"),
        ("customer_country", "XX", "is not an ISO 3166 two-letter country code"),
        ("customer_locale", "xx-nope", "is not a known locale"),
        ("customer_name", "x" * 201, "At most 200 characters"),
        ("customer_name", "Ann\x1bLee", "Must not contain control characters."),
        ("failure_code", "Card Declined!", "Use lower-case letters"),
        ("failure_message", "x" * 501, "At most 500 characters"),
        ("failed_at", "2999-01-01", "cannot be in the future"),
        ("failed_at", "not a date", "is not a date"),
        ("metadata", "{not json", "Metadata must be a JSON object"),
        ("metadata", '{"a": NaN}', "finite"),
    ],
)
def test_create_refuses_each_bad_field_next_to_it(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, field: str, value: str, message: str
) -> None:
    signed_in("operator")

    response = client.post("/transactions/new", data={**FORM, field: value})

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    error = re.search(rf'<p class="error" id="{field}-error">(.*?)</p>', page, re.S)
    assert error, f"no error next to {field}"
    assert message in html.unescape(error.group(1))
    assert f'aria-describedby="{field}' in page
    assert db.session.scalar(select(func.count()).select_from(Transaction)) == 0
    assert transaction_audits(db) == 0


def test_create_duplicate_ref_is_refused(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    user = signed_in("operator")
    make_transaction(org=user.organization, transaction_ref="TXN-NEW-1", amount=777)

    response = client.post("/transactions/new", data=FORM)

    assert response.status_code == 422
    assert "A transaction with this reference already exists." in response.get_data(as_text=True)
    assert db.session.scalars(select(Transaction.amount)).all() == [777]
    assert transaction_audits(db) == 0


def test_same_ref_in_another_organization_is_fine(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    signed_in("operator")
    make_transaction(transaction_ref="TXN-NEW-1")  # another organization
    assert client.post("/transactions/new", data=FORM).status_code == 302
    assert db.session.scalar(select(func.count()).select_from(Transaction)) == 2


def test_viewer_cannot_create(client: FlaskClient, signed_in: Callable[..., User], db: Any) -> None:
    signed_in("viewer")
    assert client.get("/transactions/new").status_code == 403
    assert client.post("/transactions/new", data=FORM).status_code == 403
    assert db.session.scalar(select(func.count()).select_from(Transaction)) == 0


def test_create_form_renders(client: FlaskClient, signed_in: Callable[..., User]) -> None:
    signed_in("operator")
    response = client.get("/transactions/new")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for name in FORM:
        assert f'name="{name}"' in page
        assert f'<label for="{name}">' in page


# --- edit contact details --------------------------------------------------------


def test_edit_contact_saves_and_audits(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    user = signed_in("operator")
    transaction = make_transaction(
        org=user.organization, transaction_ref="T-EDIT", customer_email="old@example.com", customer_name="Ann"
    )

    response = client.post(
        f"/transactions/{transaction.id}/edit",
        data={
            "customer_name": "Ann",
            "customer_email": "New@Example.com",
            "customer_phone": "020 7946 0958",
            "customer_country": "GB",
            "customer_locale": "en-GB",
        },
    )

    assert response.status_code == 302
    db.session.expire_all()
    saved = db.session.get(Transaction, transaction.id)
    assert saved.customer_email == "new@example.com"
    assert saved.customer_phone == "+442079460958"
    assert (saved.customer_country, saved.customer_locale, saved.customer_name) == ("GB", "en-GB", "Ann")
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "transaction.contact_updated"))
    assert event.actor_user_id == user.id
    assert event.transaction_id == transaction.id
    assert event.details["changes"]["customer_email"] == ["old@example.com", "new@example.com"]
    assert "customer_name" not in event.details["changes"]

    page = get(client, f"/transactions/{transaction.id}")
    assert "Contact details saved." in page
    timeline = page[page.index("<h2>Timeline</h2>") :]
    assert re.search(
        r"<strong>Contact details changed</strong> — .*?email: old@example.com → new@example.com.*?by "
        + re.escape(user.email),
        timeline,
        re.S,
    )


def test_edit_contact_bad_phone_changes_nothing(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    user = signed_in("operator")
    transaction = make_transaction(
        org=user.organization,
        transaction_ref="T-EDIT",
        customer_email="old@example.com",
        customer_phone="+14155550123",
    )

    response = client.post(
        f"/transactions/{transaction.id}/edit",
        data={"customer_email": "new@example.com", "customer_phone": "12"},
    )

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    error = re.search(r'<p class="error" id="customer_phone-error">(.*?)</p>', page, re.S)
    assert error and "is not a phone number" in html.unescape(error.group(1))
    db.session.expire_all()
    saved = db.session.get(Transaction, transaction.id)
    assert (saved.customer_email, saved.customer_phone) == ("old@example.com", "+14155550123")
    assert transaction_audits(db) == 0


def test_edit_contact_without_changes_writes_no_audit(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    user = signed_in("operator")
    transaction = make_transaction(org=user.organization, customer_email="same@example.com")
    response = client.post(
        f"/transactions/{transaction.id}/edit", data={"customer_email": "SAME@example.com"}
    )
    assert response.status_code == 302
    assert "Nothing changed." in get(client, response.headers["Location"])
    assert transaction_audits(db) == 0


def test_edit_form_is_prefilled(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("operator")
    transaction = make_transaction(
        org=user.organization, customer_email="pre@example.com", customer_country="DE"
    )
    page = get(client, f"/transactions/{transaction.id}/edit")
    assert 'value="pre@example.com"' in page
    assert 'value="DE"' in page


def test_viewer_cannot_edit(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    user = signed_in("viewer")
    transaction = make_transaction(org=user.organization, customer_email="old@example.com")
    response = client.post(f"/transactions/{transaction.id}/edit", data={"customer_email": "new@example.com"})
    assert response.status_code == 403
    db.session.expire_all()
    assert db.session.get(Transaction, transaction.id).customer_email == "old@example.com"
