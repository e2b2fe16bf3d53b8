"""The list's search (issue 16, #6), amounts sorted within a currency (#7), reversed dates and the
exact count before a bulk start (#8).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from recovery.models import Organization, Transaction, User
from recovery.transactions import counting, services
from recovery.transactions.search import country_for_timezone, phone_e164, prefix_range

REVERSED = {"date_from": "2025-02-01", "date_to": "2025-01-01"}


def listed(client: FlaskClient, **args: str) -> list[str]:
    response = client.get("/transactions", query_string=args)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    return re.findall(r'<td data-label="Reference"><bdi><a [^>]*>([^<]+)</a>', page)


@pytest.fixture
def rows(
    signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], make_org: Any
) -> Organization:
    user = signed_in("viewer")
    org = user.organization
    for ref, email, phone in (
        ("ORD-1001", "Jane.Doe@example.com", "+442079460958"),
        ("ORD-10011", "john@example.org", None),
        ("ord_2002", "ann@shop.example", "+14155550100"),
        ("AB-1", None, None),
        ("AB1", None, None),
        ("AB.2", None, None),
        ("X%Y", None, None),
    ):
        make_transaction(
            org=org, transaction_ref=ref, customer_email=email and email.lower(), customer_phone=phone
        )
    # Another merchant with the same references and email: never found.
    other = make_org()
    make_transaction(org=other, transaction_ref="ORD-1001-THEIRS", customer_email="jane.doe@example.com")
    return org


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("ORD-1001", ["ORD-1001", "ORD-10011"]),  # a whole reference is its own prefix too
        ("ord-100", ["ORD-1001", "ORD-10011"]),  # any case
        ("oRd-10011", ["ORD-10011"]),
        ("  ORD-10  ", ["ORD-1001", "ORD-10011"]),  # pasted with spaces
        ("ord", ["ORD-1001", "ORD-10011", "ord_2002"]),
        ("ORD_", ["ord_2002"]),  # _ is a character, not LIKE's wildcard
        ("ORD%", []),  # nor is %
        ("X%", ["X%Y"]),
        ("ab-", ["AB-1"]),  # punctuation counts, as typed (no collation folds it away)
        ("ab1", ["AB1"]),
        ("ab.", ["AB.2"]),
        ("RD-1001", []),  # the start of a reference, not any part of it
        ("Jane.D", ["ORD-1001"]),  # the start of an email, any case
        ("JANE.DOE@EXAMPLE.COM", ["ORD-1001"]),
        ("john@", ["ORD-10011"]),
        ("example.com", []),
        ("ann@shop", ["ord_2002"]),
    ],
)
def test_search_finds_references_and_emails_by_their_start_in_any_case(
    client: FlaskClient, rows: Organization, q: str, expected: list[str]
) -> None:
    assert sorted(listed(client, q=q)) == sorted(expected)


@pytest.mark.parametrize(
    ("timezone", "q", "expected"),
    [
        ("Europe/London", "+44 20 7946 0958", ["ORD-1001"]),
        ("Europe/London", "0044 20 7946 0958", ["ORD-1001"]),
        ("Europe/London", "020 7946 0958", ["ORD-1001"]),  # as a British customer gives it
        ("Europe/London", "(020) 7946-0958", ["ORD-1001"]),
        ("America/Los_Angeles", "(415) 555-0100", ["ord_2002"]),
        ("America/Los_Angeles", "+1 415-555-0100", ["ord_2002"]),
        ("UTC", "020 7946 0958", []),  # no country to read a local number in
        ("UTC", "+442079460958", ["ORD-1001"]),
        ("Europe/London", "+44 20 7946 095", []),  # exact, never a prefix: a digit short is another number
    ],
)
def test_search_finds_a_phone_number_as_typed_in_the_organizations_country(
    client: FlaskClient, db: Any, rows: Organization, timezone: str, q: str, expected: list[str]
) -> None:
    rows.timezone = timezone
    db.session.commit()

    assert listed(client, q=q) == expected


def test_prefix_range_bounds() -> None:
    assert prefix_range("ORD-1") == ("ord-1", "ord-2")
    assert prefix_range("ab\U0010ffff") == ("ab\U0010ffff", None)
    assert prefix_range("a\ud7ff") == ("a\ud7ff", "a\ue000")
    assert country_for_timezone("Europe/London") == "GB"
    assert country_for_timezone("UTC") is None
    assert country_for_timezone("Nowhere/Else") is None
    assert phone_e164("ORD-1001", "GB") is None
    assert phone_e164("020 7946 0958", "GB") == "+442079460958"


def _plan(db: Any, stmt: sa.Select[Any]) -> str:
    session = db.session
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SET LOCAL enable_seqscan = off"))
        compiled = stmt.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        lines = session.execute(sa.text(f"EXPLAIN {compiled}")).scalars().all()
        session.rollback()
        return "\n".join(lines)
    compiled = stmt.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    return "\n".join(str(row[-1]) for row in session.execute(sa.text(f"EXPLAIN QUERY PLAN {compiled}")))


@pytest.mark.parametrize("q", ["ord-10", "jane.doe@"])
def test_search_is_served_by_its_indexes_on_both_databases(db: Any, rows: Organization, q: str) -> None:
    """The migrated schema's indexes serve the list's own WHERE clause: no scan of every row."""
    filler = [
        {"organization_id": rows.id, "transaction_ref": f"FILL-{i:05}", "amount": 100, "currency": "usd"}
        for i in range(3000)
    ]
    db.session.execute(sa.insert(Transaction), [{**row, "source": "csv", "meta": {}} for row in filler])
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        db.session.execute(sa.text('ANALYZE "transaction"'))
        db.session.commit()
    query = services.ListQuery.from_args({"q": q})
    stmt = sa.select(Transaction.id).where(*services.list_filters(db.session, rows.id, query))

    plan = _plan(db, stmt)

    assert "ix_transaction_org_ref_search" in plan, plan
    assert "ix_transaction_org_email_search" in plan, plan
    if db.engine.dialect.name == "postgresql":
        assert "Seq Scan" not in plan, plan
        # Byte order whatever the database's collation: the pattern operator class.
        definitions = db.session.scalars(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'ix_transaction_org_%_search'")
        ).all()
        assert len(definitions) == 2 and all("text_pattern_ops" in d for d in definitions), definitions
    else:
        assert "SCAN transaction" not in plan.replace("SCAN transaction USING", ""), plan


def test_amount_sort_within_a_currency_and_currency_asked_for_without_one(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    org = user.organization
    make_transaction(org=org, transaction_ref="YEN-5000", amount=5000, currency="jpy")
    make_transaction(org=org, transaction_ref="USD-49", amount=4900, currency="usd")
    make_transaction(org=org, transaction_ref="USD-10", amount=1000, currency="usd")

    assert listed(client, sort="amount", order="desc", currency="USD") == ["USD-49", "USD-10"]
    assert listed(client, sort="amount", order="asc", currency="usd") == ["USD-10", "USD-49"]

    response = client.get("/transactions", query_string={"sort": "amount", "order": "desc"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Choose a currency to sort by amount" in page
    assert re.search(r'<input id="currency"[^>]*aria-invalid="true"', page)  # the picker is marked
    assert re.search(r'<option value="amount" selected>', page)  # the choice is kept for the next Apply
    # Listed by date meanwhile, never ¥5,000 above $49 as if they compared.
    assert sorted(re.findall(r'<td data-label="Reference"><bdi><a [^>]*>([^<]+)</a>', page)) == sorted(
        ["YEN-5000", "USD-49", "USD-10"]
    )


@pytest.mark.parametrize(
    ("args", "field", "message"),
    [
        ({"sort": "amount"}, "sort", "needs a currency filter"),
        ({"sort": "amount", "currency": "usd"}, None, None),
        (
            {"date_from": "2025-02-01", "date_to": "2025-01-01"},
            "date_to",
            "'To' (1 Jan 2025) is before 'From'",
        ),
        ({"date_from": "2025-01-01", "date_to": "2025-01-01"}, None, None),
    ],
)
def test_api_list_refuses_amount_sort_without_currency_and_reversed_dates(
    client: FlaskClient, make_token: Any, args: dict[str, str], field: str | None, message: str | None
) -> None:
    _token, raw = make_token(role="viewer")

    response = client.get("/v1/transactions", query_string=args, headers={"Authorization": f"Bearer {raw}"})

    if field is None:
        assert response.status_code == 200
        return
    assert response.status_code == 422
    assert message in response.get_json()["error"]["fields"][field]


def test_reversed_dates_say_so_by_the_fields_and_offer_them_swapped(
    client: FlaskClient, rows: Organization
) -> None:
    response = client.get("/transactions", query_string=REVERSED)
    page = response.get_data(as_text=True)

    assert response.status_code == 200
    assert "&#39;To&#39; (1 Jan 2025) is before &#39;From&#39; (1 Feb 2025)" in page
    for name, value in (("date_from", "2025-02-01"), ("date_to", "2025-01-01")):
        # Both kept as typed, marked, and described by the message.
        assert re.search(rf'<input id="{name}"[^>]*value="{value}"[^>]*aria-invalid="true"', page), name
    assert "No transactions match" not in page  # not an empty list
    assert "date_from=2025-01-01" in page and "date_to=2025-02-01" in page  # the swapped range offered
    assert "Export CSV" not in page


@pytest.fixture
def many(db: Any, signed_in: Callable[..., User]) -> Organization:
    user = signed_in("operator")
    org = user.organization
    db.session.execute(
        sa.insert(Transaction),
        [
            {
                "organization_id": org.id,
                "transaction_ref": f"BULK-{i:05}",
                "amount": 100 + i,
                "currency": "usd" if i % 5 else "eur",
                "status": "failed",
                "source": "csv",
                "meta": {},
            }
            for i in range(1234)
        ],
    )
    db.session.commit()
    return org


def test_select_all_shows_the_exact_count_past_the_lists_cap(client: FlaskClient, many: Organization) -> None:
    page = client.get("/transactions").get_data(as_text=True)
    assert "1,000+ transactions" in page
    # The choice asks for the exact count when offered.
    url = re.search(r'hx-get="(/transactions/matching[^"]*)"', page)
    assert url, "no exact count asked for"

    fragment = client.get(url.group(1).replace("&amp;", "&")).get_data(as_text=True)

    assert 'data-bulk-matching="1,234"' in fragment
    assert "Select all 1,234 matching this filter" in fragment
    usd = client.get("/transactions/matching", query_string={"currency": "usd"}).get_data(as_text=True)
    assert "Select all 987 matching this filter" in usd  # 1234 less the 247 in EUR


def test_exact_count_refuses_a_bad_filter_and_viewers(
    client: FlaskClient, signed_in: Callable[..., User]
) -> None:
    signed_in("operator")
    response = client.get(
        "/transactions/matching", query_string={"date_from": "2025-02-01", "date_to": "2025-01-01"}
    )
    assert response.status_code == 400
    assert "is before" in response.get_data(as_text=True)
    client.post("/logout")
    signed_in("viewer")
    assert client.get("/transactions/matching").status_code == 403


def test_a_count_that_runs_out_of_time_says_more_than(db: Any, many: Organization) -> None:
    query = services.ListQuery.from_args({})

    exact = counting.count_exact(db.session, many.id, query, floor=1000)
    if db.engine.dialect.name == "postgresql":
        # A count held up (here by a lock another connection holds) is stopped at its time limit.
        with db.engine.connect() as other:
            other.execute(sa.text('LOCK TABLE "transaction" IN ACCESS EXCLUSIVE MODE'))
            cut = counting.count_exact(db.session, many.id, query, seconds=0.2, floor=1000)
            other.rollback()
    else:
        cut = counting.count_exact(db.session, many.id, query, seconds=0.0, floor=1000)

    assert (exact.count, exact.exact, exact.words()) == (1234, True, "1,234")
    assert (cut.exact, cut.words()) == (False, "more than 1,000")
    # The request's transaction goes on as before: no timeout left behind, nothing broken.
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Transaction)) == 1234
    if db.engine.dialect.name == "postgresql":
        assert db.session.scalar(sa.text("SHOW statement_timeout")) == "0"
