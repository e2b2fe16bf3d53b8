"""CSV import from the upload page: every way a file is refused, and row-level problems."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.models import AuditEvent, CsvImport, Transaction, User
from tests.fixtures.csvdata import HEADER, csv_bytes, csv_text, row, rows
from tests.fixtures.imports import (
    count,
    file_error,
    imported_refs,
    problems,
    proposed,
    send_file,
    the_import,
    upload,
)

# --- the file as a whole is refused ------------------------------------------------


@pytest.mark.parametrize(
    ("header", "field", "message"),
    [
        (["transaction_ref", "amount"], "currency", "Choose the column that holds this; it is required."),
        (["amount", "currency", "customer_email"], "transaction_ref", "it is required"),
        (["ref", "currency", "customer_email"], "amount", "Choose the column that holds the amount"),
        (["transaction_ref", "amount", "amount_minor", "currency"], "amount_minor", "not both"),
    ],
)
def test_a_mapping_without_a_required_field_is_refused_and_the_file_kept(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, header: list[str], field: str, message: str
) -> None:
    signed_in("operator")
    response = upload(client, csv_bytes(rows(3), header))

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "nothing was imported and your file is kept" in page
    error = re.search(rf'<p class="error" id="{field}-error">(.*?)</p>', page, re.S)
    assert error and message in html.unescape(error.group(1))
    assert count(db, Transaction) == 0
    csv_import = the_import(db)
    assert (csv_import.status, csv_import.content is not None) == ("mapping", True)


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ({"currency": "coupon"}, "The file has no column 'coupon'."),
        ({"customer_name": "transaction_ref"}, "already chosen for transaction_ref"),
        ({"currency": "<script>x</script>"}, "The file has no column '<script>x</script>'."),
    ],
)
def test_a_bad_choice_at_the_mapping_form_is_named_and_loses_nothing(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, choice: dict[str, str], message: str
) -> None:
    signed_in("operator")
    response = upload(client, csv_bytes(rows(2)), mapping=choice)

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert message in html.unescape(page)
    assert "<script>x" not in page  # escaped
    assert count(db, Transaction) == 0
    # Corrected, the same upload imports: nothing had to be sent again.
    csv_import = the_import(db)
    fixed = client.post(
        f"/imports/{csv_import.id}/mapping",
        data=proposed(page) | {"customer_name": "customer_name", "currency": "currency"},
    )
    assert fixed.status_code == 302
    assert imported_refs(db) == ["CSV-000001", "CSV-000002"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (csv_bytes(rows(2), [*HEADER, "Amount "]), "The header is wrong: repeated amount."),
        (b",,\r\nT-1,50.00,usd\r\n", "The first line must be a header naming the columns; it is empty."),
        (
            (",".join(f"c{n}" for n in range(201)) + "\r\n" + "x," * 200 + "x\r\n").encode(),
            "The header has 201 columns; at most 200 can be matched.",
        ),
    ],
    ids=["repeated", "nameless", "too-wide"],
)
def test_a_header_whose_columns_cannot_be_told_apart_refuses_the_file(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, data: bytes, message: str
) -> None:
    signed_in("operator")
    response = send_file(client, data)
    assert response.status_code == 422
    assert file_error(response).startswith(message)
    assert count(db, CsvImport) == 0


def test_repeated_column_names_refuse_the_file(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("operator")
    response = send_file(client, csv_bytes(rows(2), [*HEADER, "Amount "]))
    assert response.status_code == 422
    assert file_error(response) == "The header is wrong: repeated amount. Give each column its own name."
    assert count(db, CsvImport) == 0


def test_header_is_case_and_space_insensitive_and_in_any_order(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("operator")
    data = b"  Currency ,AMOUNT,Transaction_Ref,coupon\r\nusd,50.00,T-1,SPRING\r\n"
    assert upload(client, data).status_code == 302
    assert db.session.scalar(select(Transaction.amount).where(Transaction.transaction_ref == "T-1")) == 5000


def test_not_utf8_is_rejected_with_a_clear_message(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("operator")
    data = csv_bytes([row(1, customer_name="Zoë Müller")], encoding="latin-1")

    response = upload(client, data)

    assert response.status_code == 422
    error = file_error(response)
    assert "The file is not UTF-8 text" in error
    assert "Save it as 'CSV UTF-8'" in error
    assert count(db, Transaction) == 0
    assert count(db, CsvImport) == 0


def test_utf8_with_bom_is_accepted(client: FlaskClient, signed_in: Callable[..., User], db: Any) -> None:
    signed_in("operator")
    data = csv_bytes([row(1, customer_name="Zoë Müller"), row(2)], bom=True)
    assert data.startswith(b"\xef\xbb\xbf")

    response = upload(client, data)

    assert response.status_code == 302
    assert imported_refs(db) == ["CSV-000001", "CSV-000002"]
    assert db.session.scalar(
        select(Transaction.customer_name).where(Transaction.transaction_ref == "CSV-000001")
    ) == ("Zoë Müller")


@pytest.mark.parametrize("app_config", [{"CSV_MAX_BYTES": 2048}])
def test_file_over_the_size_limit_is_rejected_with_the_limit(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("operator")
    data = csv_bytes(rows(40))
    assert 2048 < len(data) < 2048 + 64 * 1024

    response = upload(client, data)

    assert response.status_code == 422
    assert file_error(response) == (
        "The file is larger than the limit of 2 KiB. Split it into smaller files and upload each."
    )
    assert count(db, Transaction) == 0
    assert count(db, CsvImport) == 0
    assert "at most 2 KiB" in response.get_data(as_text=True)


@pytest.mark.parametrize("app_config", [{"CSV_MAX_BYTES": 2048}])
def test_upload_far_over_the_limit_gets_the_same_message(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("operator")
    data = csv_bytes(rows(2000))  # past MAX_CONTENT_LENGTH: refused before the view reads it
    assert len(data) > 2048 + 64 * 1024

    response = upload(client, data)

    assert response.status_code == 413
    assert "larger than the limit of 2 KiB" in file_error(response)
    assert count(db, CsvImport) == 0


def test_a_file_just_under_the_limit_is_accepted(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, app: Any
) -> None:
    signed_in("operator")
    data = csv_bytes(rows(5))
    app.config["CSV_MAX_BYTES"] = len(data)
    assert upload(client, data).status_code == 302
    assert count(db, Transaction) == 5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "The file is empty. The first line must be the header."),
        (csv_bytes([]), "The file has a header but no rows."),
        (csv_bytes([]) + b"\r\n\r\n ,,,,,,,,\r\n", "The file has a header but no rows."),
        (b"transaction_ref,amount,currency\r\nT-1,5\x00000,usd\r\n", "NUL bytes"),
        (b'transaction_ref,amount,currency\r\n"T-1,5000,usd\r\n', "not valid CSV"),
    ],
    ids=["empty", "header-only", "header-and-blank-lines", "nul", "unclosed-quote"],
)
def test_empty_or_unreadable_files_are_rejected(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, data: bytes, message: str
) -> None:
    signed_in("operator")
    response = upload(client, data)
    assert response.status_code == 422
    assert message in file_error(response)
    assert count(db, Transaction) == 0
    assert count(db, CsvImport) == 0


def test_no_file_chosen(client: FlaskClient, signed_in: Callable[..., User]) -> None:
    signed_in("operator")
    response = client.post("/imports", data={}, content_type="multipart/form-data")
    assert response.status_code == 422
    assert file_error(response) == "Choose a CSV file to upload."


def test_viewer_cannot_upload(client: FlaskClient, signed_in: Callable[..., User], db: Any) -> None:
    signed_in("viewer")
    assert client.get("/imports").status_code == 200
    assert upload(client, csv_bytes(rows(2))).status_code == 403
    assert count(db, CsvImport) == 0
    assert count(db, Transaction) == 0


# --- row by row --------------------------------------------------------------------


def test_invalid_and_ragged_rows_are_listed_while_valid_neighbours_are_imported(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    user = signed_in("operator")
    header = ",".join(HEADER)
    good = [csv_text([row(n)]).splitlines()[1] for n in range(1, 6)]
    lines = [
        header,  # row 1
        good[0],  # row 2
        "BAD-AMOUNT,12.345,usd,,,,,,",  # row 3
        good[1],  # row 4
        "RAGGED,50.00,usd",  # row 5: 3 cells, the header has 9
        "",  # a blank line is skipped, but still counts as a row of the sheet
        good[2],  # row 7
        "BAD-EMAIL,50.00,usd,,not-an-email,,,,",  # row 8
        "BAD-CURRENCY,50.00,xyz,,,,,,",  # row 9
        "BAD REF,50.00,usd,,,,,,",  # row 10
        "FUTURE,50.00,usd,,,,,,2999-01-01",  # row 11
        good[3],  # row 12
        "BAD-PHONE,50.00,usd,,,12,,,",  # row 13
        "EXTRA,50.00,usd,,,,,,,,",  # row 14: 11 cells
        good[4],  # row 15
    ]

    response = upload(client, ("\r\n".join(lines) + "\r\n").encode())

    assert response.status_code == 302
    assert imported_refs(db) == [f"CSV-00000{n}" for n in range(1, 6)]
    csv_import = the_import(db)
    assert (csv_import.status, csv_import.total_rows, csv_import.processed_rows) == ("done", 13, 13)
    assert (csv_import.imported_rows, csv_import.invalid_rows, csv_import.duplicate_rows) == (5, 8, 0)
    assert csv_import.user_id == user.id

    page = client.get(response.headers["Location"]).get_data(as_text=True)
    listed = problems(page)
    assert [(n, ref) for n, ref, _ in listed] == [
        (3, "BAD-AMOUNT"),
        (5, "—"),
        (8, "BAD-EMAIL"),
        (9, "BAD-CURRENCY"),
        (10, "BAD REF"),
        (11, "FUTURE"),
        (13, "BAD-PHONE"),
        (14, "—"),
    ]
    reasons = {n: reason for n, _, reason in listed}
    assert reasons[3] == "amount: USD amounts take at most 2 decimals; got '12.345'."
    assert reasons[5] == "The row has 3 cells; the header has 9."
    assert reasons[8].startswith("customer_email: ")
    assert reasons[9] == (
        "currency: 'xyz' is not a known ISO 4217 currency code.; amount: Set a valid currency first."
    )
    assert reasons[10].startswith("transaction_ref: Use letters, digits")
    assert reasons[11] == "failed_at: The failure date cannot be in the future."
    assert reasons[13].startswith("customer_phone: ")
    assert reasons[14] == "The row has 11 cells; the header has 9."
    assert "100%" in page


def test_duplicates_of_existing_refs_are_reported_and_not_imported_twice(
    client: FlaskClient,
    signed_in: Callable[..., User],
    make_transaction: Callable[..., Transaction],
    make_org: Callable[..., Any],
    db: Any,
) -> None:
    user = signed_in("operator")
    make_transaction(org=user.organization, transaction_ref="CSV-000002", amount=777)
    make_transaction(org=make_org(), transaction_ref="CSV-000003", amount=888)  # another organization's

    response = upload(client, csv_bytes(rows(4)))

    assert response.status_code == 302
    mine = db.session.execute(
        select(Transaction.transaction_ref, Transaction.amount)
        .where(Transaction.organization_id == user.organization_id)
        .order_by(Transaction.transaction_ref)
    )
    assert [tuple(r) for r in mine] == [
        ("CSV-000001", 1001),
        ("CSV-000002", 777),  # the existing row is untouched
        ("CSV-000003", 1003),  # another organization's ref is no duplicate
        ("CSV-000004", 1004),
    ]
    csv_import = the_import(db)
    assert (csv_import.imported_rows, csv_import.duplicate_rows, csv_import.invalid_rows) == (3, 1, 0)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert problems(page) == [
        (3, "CSV-000002", "Duplicate: a transaction with this reference already exists.")
    ]


def test_duplicates_within_the_file(client: FlaskClient, signed_in: Callable[..., User], db: Any) -> None:
    signed_in("operator")
    records = [row(1), row(2), row(1, amount="99.99"), row(3), row(2)]

    response = upload(client, csv_bytes(records))

    assert response.status_code == 302
    assert imported_refs(db) == ["CSV-000001", "CSV-000002", "CSV-000003"]
    assert (
        db.session.scalar(select(Transaction.amount).where(Transaction.transaction_ref == "CSV-000001"))
        == 1001
    )
    csv_import = the_import(db)
    assert (csv_import.imported_rows, csv_import.duplicate_rows) == (3, 2)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert problems(page) == [
        (4, "CSV-000001", "Duplicate: this reference appears earlier in the file."),
        (6, "CSV-000002", "Duplicate: this reference appears earlier in the file."),
    ]


def test_uploading_the_same_file_twice_imports_nothing_the_second_time(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("operator")
    data = csv_bytes(rows(25))

    first = upload(client, data)
    second = upload(client, data)

    assert first.status_code == second.status_code == 302
    assert count(db, Transaction) == 25
    db.session.expire_all()
    later = db.session.scalars(select(CsvImport).order_by(CsvImport.id)).all()[-1]
    assert (later.status, later.imported_rows, later.duplicate_rows) == ("done", 0, 25)
    page = client.get(second.headers["Location"]).get_data(as_text=True)
    assert len(problems(page)) == 25


@pytest.mark.parametrize(
    ("column", "cell", "currency", "stored"),
    [
        ("amount", "50.00", "usd", 5000),
        ("amount", "0.29", "usd", 29),
        ("amount", "$1,234.50", "usd", 123450),
        ("amount", "USD 50", "usd", 5000),
        ("amount", "€5", "eur", 500),
        ("amount", "5000", "jpy", 5000),
        ("amount", "¥5000", "jpy", 5000),
        ("amount", "5,000", "jpy", 5000),
        ("amount", "1.005", "bhd", 1005),
        ("amount", "BHD 5.000", "bhd", 5000),
        ("amount_minor", "5000", "usd", 5000),
        ("amount_minor", "5000", "jpy", 5000),
        ("amount_minor", "5000", "bhd", 5000),
    ],
)
def test_amounts_are_read_as_the_column_says(
    client: FlaskClient,
    signed_in: Callable[..., User],
    db: Any,
    column: str,
    cell: str,
    currency: str,
    stored: int,
) -> None:
    signed_in("operator")
    data = csv_text(
        [{"transaction_ref": "T-1", column: cell, "currency": currency}],
        ["transaction_ref", column, "currency"],
    )
    assert upload(client, data.encode()).status_code == 302
    assert db.session.scalar(select(Transaction.amount).where(Transaction.transaction_ref == "T-1")) == stored


@pytest.mark.parametrize(
    ("column", "cell", "currency", "reason"),
    [
        (
            "amount",
            "5000",
            "usd",
            "amount: 5000 has no decimal point. Write 5000.00 for USD 5,000.00, "
            "or name the column amount_minor if 5000 means USD 50.00.",
        ),
        (
            "amount",
            "5000",
            "bhd",
            "amount: 5000 has no decimal point. Write 5000.000 for BHD 5,000.000, "
            "or name the column amount_minor if 5000 means BHD 5.000.",
        ),
        ("amount", "12.345", "usd", "amount: USD amounts take at most 2 decimals; got '12.345'."),
        ("amount", "EUR 5.00", "usd", "amount: 'EUR 5.00' says EUR but the row's currency is USD."),
        ("amount", "1.234,50", "eur", "amount: '1.234,50' is not an amount: use a point for decimals"),
        ("amount", "-3.00", "usd", "amount: '-3.00' is negative"),
        ("amount_minor", "50.00", "usd", "amount_minor column takes whole numbers"),
    ],
)
def test_an_amount_that_could_be_misread_is_refused_with_its_row(
    client: FlaskClient,
    signed_in: Callable[..., User],
    db: Any,
    column: str,
    cell: str,
    currency: str,
    reason: str,
) -> None:
    signed_in("operator")
    records = [
        {
            "transaction_ref": "GOOD",
            column: "700" if column == "amount_minor" else "7.00",
            "currency": currency,
        },
        {"transaction_ref": "AMBIGUOUS", column: cell, "currency": currency},
    ]
    response = upload(client, csv_text(records, ["transaction_ref", column, "currency"]).encode())

    assert response.status_code == 302
    assert imported_refs(db) == ["GOOD"]
    [(line, ref, found)] = problems(client.get(response.headers["Location"]).get_data(as_text=True))
    assert (line, ref) == (3, "AMBIGUOUS")
    assert found.startswith(reason) or reason in found


def test_a_row_with_metadata_nested_too_deeply_is_listed_and_its_neighbours_imported(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    # json.loads gives up on "[" * 3000 with a RecursionError, not a JSONDecodeError:
    # it once failed the whole chunk, losing every valid row in it.
    signed_in("operator")
    lines = [
        "transaction_ref,amount,currency,metadata",
        'GOOD-1,50.00,usd,"{""order_id"": ""ORD-1""}"',
        "DEEP,50.00,usd," + "[" * 3000,
        "GOOD-2,50.00,usd,",
    ]

    response = upload(client, ("\r\n".join(lines) + "\r\n").encode())

    assert imported_refs(db) == ["GOOD-1", "GOOD-2"]
    csv_import = the_import(db)
    assert (csv_import.status, csv_import.imported_rows, csv_import.invalid_rows) == ("done", 2, 1)
    [(line, ref, reason)] = problems(client.get(response.headers["Location"]).get_data(as_text=True))
    assert (line, ref) == (3, "DEEP") and "nested too deeply" in reason


def test_imported_rows_are_normalised_and_show_imported_on_the_timeline(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    user = signed_in("operator")
    record = row(
        1,
        customer_email="Ann@Example.COM",
        customer_phone="020 7946 0958",
        customer_country="gb",
        currency="GBP",
        amount="12.50",
    )
    response = upload(client, csv_bytes([record]), filename="january.csv")
    assert response.status_code == 302

    transaction = db.session.scalar(select(Transaction))
    assert transaction.organization_id == user.organization_id
    assert transaction.source == "csv"
    assert transaction.status == "failed"
    assert (transaction.customer_email, transaction.customer_phone) == ("ann@example.com", "+442079460958")
    assert (transaction.currency, transaction.amount) == ("gbp", 1250)

    page = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)
    timeline = page[page.index("<h2>Timeline</h2>") :]
    assert re.search(
        r"<strong>Imported</strong> — from january.csv\s*<span class=\"sub\">by " + re.escape(user.email),
        timeline,
    )
    assert "<strong>Created</strong>" not in timeline
    assert "£12.50" in page


def test_upload_is_audited(client: FlaskClient, signed_in: Callable[..., User], db: Any) -> None:
    user = signed_in("operator")
    upload(client, csv_bytes(rows(2)), filename="a.csv")
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "import.created"))
    assert event.actor_user_id == user.id
    assert event.details == {"filename": "a.csv", "rows": 2}


def test_another_organizations_import_is_404(
    client: FlaskClient, signed_in: Callable[..., User], make_user: Callable[..., User], db: Any
) -> None:
    other = make_user(role="operator")
    signed_in("operator")
    csv_import = CsvImport(organization_id=other.organization_id, user_id=other.id, filename="theirs.csv")
    db.session.add(csv_import)
    db.session.commit()
    assert client.get(f"/imports/{csv_import.id}").status_code == 404
    assert client.post(f"/imports/{csv_import.id}/retry").status_code == 404
    assert client.get(f"/imports/{csv_import.id}/mapping").status_code == 404
    assert client.post(f"/imports/{csv_import.id}/mapping", data={"currency": "currency"}).status_code == 404
    assert "theirs.csv" not in client.get("/imports").get_data(as_text=True)


def test_row_numbers_count_records_as_a_spreadsheet_shows_them(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("owner")
    lines = [
        "transaction_ref,amount,currency,failure_message",
        'MULTI,50.00,usd,"Declined.\r\nCall your bank.\r\nThen retry."',  # row 2, three lines in the file
        "BAD-CURRENCY,50.00,xyz,",  # row 3
    ]

    response = upload(client, ("\r\n".join(lines) + "\r\n").encode())

    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert [(n, ref) for n, ref, _ in problems(page)] == [(3, "BAD-CURRENCY")]
    message = db.session.scalar(
        select(Transaction.failure_message).where(Transaction.transaction_ref == "MULTI")
    )
    assert message == "Declined.\nCall your bank.\nThen retry."
