"""Column mapping: Stripe's own export as it is, remembered mappings, status filtering,
unusable contact details imported with a warning, and the template CSV."""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from recovery.models import AuditEvent, CsvImport, ImportMapping, Transaction, User, utcnow
from tests.fixtures.csvdata import csv_text
from tests.fixtures.imports import imported_refs, problems, proposed, send_file, the_import, upload

# A Stripe Dashboard payments export's header, as it comes.
STRIPE_HEADER_LINE = (
    "id,Description,Seller Message,Created date (UTC),Amount,Amount Refunded,Currency,Converted Amount,"
    "Converted Amount Refunded,Fee,Tax,Converted Currency,Status,Statement Descriptor,Customer ID,"
    "Customer Description,Customer Email,Captured,Card ID,Card Last4,Card Brand,Card Funding,Card Exp Month,"
    "Card Exp Year,Card Name,Card Address Line1,Card Address Line2,Card Address City,Card Address State,"
    "Card Address Country,Card Address Zip,Card Issue Country,Card Fingerprint,Card CVC Status,"
    "Card AVS Zip Status,Card AVS Line1 Status,Card Tokenization Method,Disputed Amount,Dispute Status,"
    "Dispute Reason,Dispute Date (UTC),Dispute Evidence Due (UTC),Invoice ID,Invoice Number,"
    "Checkout Session ID,Payment Source Type,Destination,Transfer,Transfer Group,PaymentIntent ID,"
    "Decline Reason"
)
STRIPE_HEADER = STRIPE_HEADER_LINE.split(",")


def stripe_row(ref: str, status: str, amount: str, currency: str = "usd", **cells: str) -> dict[str, str]:
    return {
        "id": ref,
        "Description": "Order 1",
        "Seller Message": "The bank did not return any further details with this decline.",
        "Created date (UTC)": "2026-11-30 14:22",
        "Amount": amount,
        "Amount Refunded": "0.00",
        "Currency": currency,
        "Status": status,
        "Customer Email": "ann@example.com",
        "Card Name": "Ann Lee",
        "Card Address Country": "GB",
        "Card Last4": "0002",
        "Decline Reason": "Do not honor",
        **cells,
    }


def stripe_export(records: list[dict[str, str]]) -> bytes:
    return csv_text(records, STRIPE_HEADER).encode()


def mapping_page(client: FlaskClient, data: bytes, filename: str = "payments.csv") -> tuple[str, str]:
    response = send_file(client, data, filename)
    assert response.status_code == 302 and response.headers["Location"].endswith("/mapping")
    page = client.get(response.headers["Location"])
    assert page.status_code == 200
    return response.headers["Location"], page.get_data(as_text=True)


def warnings(page: str) -> list[tuple[int, str, str]]:
    table = page[page.index('<table class="data warnings">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(
        r'<td data-label="Row" class="num">(\d+)</td><td data-label="Reference"><bdi>(.*?)</bdi></td>'
        r'<td data-label="Warning">(.*?)</td>',
        table,
    )
    return [(int(n), html.unescape(ref), html.unescape(reason)) for n, ref, reason in rows]


def test_a_stripe_export_is_proposed_a_mapping_and_imports_only_its_failed_payments(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    user = signed_in("operator")
    records = [
        stripe_row("ch_3Failed1", "Failed", "50.00"),
        stripe_row("ch_3Paid", "Paid", "20.00"),
        stripe_row("ch_3Refunded", "Refunded", "20.00"),
        stripe_row("py_3Failed2", "failed", "¥5000", "jpy", **{"Decline Reason": "insufficient_funds"}),
        stripe_row("ch_3Canceled", "Canceled", "1.00"),
        stripe_row("ch_3Failed3", "Failed", "1,234.50", "eur", **{"Card Address Country": ""}),
    ]
    location, page = mapping_page(client, stripe_export(records))

    assert proposed(page) == {
        "transaction_ref": "id",
        "amount": "amount",
        "amount_minor": "",
        "currency": "currency",
        "status": "status",
        "customer_name": "card name",
        "customer_email": "customer email",
        "customer_phone": "",
        "customer_country": "card address country",
        "customer_locale": "",
        "failure_code": "decline reason",
        "failure_message": "seller message",
        "failed_at": "created date (utc)",
        "metadata": "",
    }
    assert "Stripe" in page and "6 rows" in page
    preview = page[page.index('id="file-preview"') :]
    assert (
        "ch_3Failed1" in preview and "Card Fingerprint" in preview
    )  # the header and first rows, all columns

    response = client.post(location, data=proposed(page))

    assert response.status_code == 302
    assert imported_refs(db) == ["ch_3Failed1", "ch_3Failed3", "py_3Failed2"]
    first = db.session.scalar(select(Transaction).where(Transaction.transaction_ref == "ch_3Failed1"))
    assert (first.amount, first.currency, first.customer_email) == (5000, "usd", "ann@example.com")
    assert (first.customer_name, first.customer_country, first.failure_code) == (
        "Ann Lee",
        "GB",
        "do_not_honor",
    )
    assert first.failure_message == "The bank did not return any further details with this decline."
    assert first.failed_at.isoformat() == "2026-11-30T14:22:00+00:00"
    assert first.organization_id == user.organization_id
    amounts = {r: a for r, a in db.session.execute(select(Transaction.transaction_ref, Transaction.amount))}
    assert amounts["py_3Failed2"] == 5000 and amounts["ch_3Failed3"] == 123450
    csv_import = the_import(db)
    assert (csv_import.imported_rows, csv_import.skipped_rows, csv_import.invalid_rows) == (3, 3, 0)
    detail = client.get(response.headers["Location"]).get_data(as_text=True)
    assert '<dd id="skipped-count">3</dd>' in detail
    assert "Rows whose status is not Failed" in detail
    mapped = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "import.mapped"))
    assert mapped.actor_user_id == user.id and mapped.details["mapping"]["amount"] == "amount"


def test_a_changed_mapping_is_remembered_for_the_next_file_with_that_header(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("operator")
    records = [stripe_row("ch_1", "Failed", "50.00", **{"Customer Description": "Ann from the shop"})]
    location, page = mapping_page(client, stripe_export(records))
    assert "We matched the columns we recognise" in page
    choice = {**proposed(page), "customer_name": "customer description"}
    assert client.post(location, data=choice).status_code == 302
    assert db.session.scalar(select(Transaction.customer_name)) == "Ann from the shop"

    # The next export of the same shape opens with that choice.
    _, again = mapping_page(client, stripe_export([stripe_row("ch_2", "Failed", "50.00")]))
    assert "the matching you confirmed last time" in again
    assert proposed(again)["customer_name"] == "customer description"
    assert db.session.scalar(select(func.count()).select_from(ImportMapping)) == 1


def test_another_organization_does_not_see_a_remembered_mapping(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, make_org: Callable[..., Any]
) -> None:
    theirs = make_org()
    from recovery.imports import mapping as mappings

    mappings.remember(
        db.session,
        theirs.id,
        STRIPE_HEADER,
        {**mappings.propose(STRIPE_HEADER), "customer_name": "customer description"},
    )
    db.session.commit()
    signed_in("operator")
    _, page = mapping_page(client, stripe_export([stripe_row("ch_1", "Failed", "50.00")]))
    assert proposed(page)["customer_name"] == "card name"
    assert "We matched the columns we recognise" in page


@pytest.mark.parametrize(
    ("email", "phone", "country", "imported", "message"),
    [
        # A UK drama-range number, no network routes it: the email still reaches the customer.
        (
            "ann@example.com",
            "+44 7700 900123",
            "GB",
            True,
            "customer_phone: '+44 7700 900123' is not a valid",
        ),
        ("ann@example.com", "07700 900123", "GB", True, "customer_phone: '07700 900123' is not a valid"),
        ("not-an-email", "+442079460958", "GB", True, "customer_email: "),
        ("ann@example.com", "", "XX", True, "customer_country: 'XX' is not an ISO 3166"),
        ("", "+44 7700 900123", "GB", False, "customer_phone: '+44 7700 900123' is not a valid"),
        ("not-an-email", "+44 7700 900123", "GB", False, "customer_email: "),
    ],
    ids=["drama-intl", "drama-local", "bad-email-good-phone", "bad-country", "phone-only", "neither"],
)
def test_an_unusable_contact_detail_is_left_empty_with_a_warning_when_the_row_keeps_another(
    client: FlaskClient,
    signed_in: Callable[..., User],
    db: Any,
    email: str,
    phone: str,
    country: str,
    imported: bool,
    message: str,
) -> None:
    signed_in("operator")
    header = ["transaction_ref", "amount", "currency", "customer_email", "customer_phone", "customer_country"]
    records = [
        {"transaction_ref": "GOOD", "amount": "10.00", "currency": "gbp", "customer_email": "b@example.com"},
        {
            "transaction_ref": "ROW-3",
            "amount": "10.00",
            "currency": "gbp",
            "customer_email": email,
            "customer_phone": phone,
            "customer_country": country,
        },
    ]
    response = upload(client, csv_text(records, header).encode())

    assert response.status_code == 302
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    if imported:
        assert imported_refs(db) == ["GOOD", "ROW-3"]
        [(line, ref, reason)] = warnings(page)
        assert (line, ref) == (3, "ROW-3")
        assert reason.startswith(message) and reason.endswith("Imported without it.")
        assert problems(page) == []
        row = db.session.scalar(select(Transaction).where(Transaction.transaction_ref == "ROW-3"))
        field = message.split(":")[0]
        assert getattr(row, field) is None
        assert the_import(db).invalid_rows == 0
    else:
        assert imported_refs(db) == ["GOOD"]
        [(line, ref, reason)] = problems(page)
        assert (line, ref) == (3, "ROW-3") and message in reason
        assert "Imported with a warning" not in page


def test_the_template_csv_has_a_row_per_currency_and_imports_as_it_is(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("viewer")
    index = client.get("/imports").get_data(as_text=True)
    assert 'href="/imports/template.csv"' in index
    assert "50.00 for USD 50.00, 5000 for JPY 5,000, 5.000 for BHD 5.000" in index
    response = client.get("/imports/template.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    data = response.get_data()
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert {r["currency"] for r in rows} >= {"usd", "eur", "gbp", "jpy", "bhd"}

    client.post("/logout")
    signed_in("operator")
    result = upload(client, data, "template.csv")
    assert result.status_code == 302
    csv_import = the_import(db)
    assert (csv_import.imported_rows, csv_import.invalid_rows, csv_import.warnings) == (len(rows), 0, [])
    stored = {c: a for c, a in db.session.execute(select(Transaction.currency, Transaction.amount))}
    assert stored == {"usd": 5000, "eur": 123450, "gbp": 2999, "jpy": 5000, "bhd": 12500}


def test_a_viewer_sees_the_mapping_page_but_cannot_confirm_it(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    operator = signed_in("operator")
    location, _ = mapping_page(client, stripe_export([stripe_row("ch_1", "Failed", "50.00")]))
    client.post("/logout")
    signed_in("viewer", org=operator.organization)
    page = client.get(location).get_data(as_text=True)
    assert "Your role can see imports but not start one" in page
    assert client.post(location, data={"currency": "currency"}).status_code == 403
    assert the_import(db).status == "mapping"


def test_a_confirmed_import_cannot_be_mapped_again(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("operator")
    location, page = mapping_page(client, stripe_export([stripe_row("ch_1", "Failed", "50.00")]))
    assert client.post(location, data=proposed(page)).status_code == 302
    again = client.post(location, data={**proposed(page), "amount": "", "amount_minor": "amount"})
    assert again.status_code == 302 and again.headers["Location"].endswith(f"/imports/{the_import(db).id}")
    assert the_import(db).mapping["amount"] == "amount"
    assert db.session.scalar(select(func.count()).select_from(Transaction)) == 1


def test_an_upload_left_unmapped_for_a_day_is_dropped_at_the_next_upload(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("operator")
    mapping_page(client, stripe_export([stripe_row("ch_1", "Failed", "50.00")]))
    old = the_import(db)
    old.created_at = utcnow() - timedelta(days=1, minutes=1)
    db.session.commit()
    mapping_page(client, stripe_export([stripe_row("ch_2", "Failed", "50.00")]))
    db.session.expire_all()
    [kept] = db.session.scalars(select(CsvImport)).all()
    assert b"ch_2" in kept.content and b"ch_1" not in kept.content


# --- the command line takes the same mapping ------------------------------------------


@pytest.fixture
def run(app: Any) -> Callable[..., Any]:
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=list(args))


def test_the_command_line_imports_a_stripe_export_with_a_changed_mapping(
    run: Callable[..., Any], db: Any, make_org: Callable[..., Any], tmp_path: Any
) -> None:
    organization = make_org()
    path = tmp_path / "payments.csv"
    records = [
        stripe_row("ch_1", "Failed", "50.00", **{"Customer Description": "Ann from the shop"}),
        stripe_row("ch_2", "Paid", "50.00"),
        stripe_row("ch_3", "Failed", "12.00", **{"Customer Email": "", "Card Name": ""}),
    ]
    path.write_bytes(stripe_export(records))

    result = run(
        "import-csv", "--org", organization.slug, "--map", "customer_name=Customer Description", str(path)
    )

    assert result.exit_code == 0, result.output
    assert "2 imported, 0 duplicates, 0 invalid, 1 skipped (not failed)." in result.output
    names = {
        r: n for r, n in db.session.execute(select(Transaction.transaction_ref, Transaction.customer_name))
    }
    assert names == {"ch_1": "Ann from the shop", "ch_3": None}
    assert {t.organization_id for t in db.session.scalars(select(Transaction))} == {organization.id}
    saved = db.session.scalar(select(ImportMapping))
    assert (saved.organization_id, saved.mapping["customer_name"]) == (
        organization.id,
        "customer description",
    )


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        (["--map", "amount"], "write FIELD=COLUMN"),
        (["--map", "currency=Coupon"], "currency: The file has no column 'coupon'."),
        (["--map", "currency="], "currency: Choose the column that holds this; it is required."),
        (["--map", "colour=Currency"], "'colour' is not a field we import"),
        (["--map", "amount_minor=Amount"], "already chosen for amount"),
    ],
)
def test_the_command_line_refuses_a_bad_mapping_and_imports_nothing(
    run: Callable[..., Any],
    db: Any,
    make_org: Callable[..., Any],
    tmp_path: Any,
    maps: list[str],
    message: str,
) -> None:
    organization = make_org()
    path = tmp_path / "payments.csv"
    path.write_bytes(stripe_export([stripe_row("ch_1", "Failed", "50.00")]))

    result = run("import-csv", "--org", organization.slug, *maps, str(path))

    assert result.exit_code == 2
    assert message in result.output
    assert db.session.scalar(select(func.count()).select_from(Transaction)) == 0
    assert db.session.scalar(select(func.count()).select_from(CsvImport)) == 0


def test_an_upload_waiting_for_its_columns_is_listed_with_a_link_to_finish_it(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("operator")
    location, _ = mapping_page(client, stripe_export([stripe_row("ch_1", "Failed", "50.00")]))
    index = client.get("/imports").get_data(as_text=True)
    assert f'<a class="status status-queued" href="{location}">columns to match</a>' in index
    # Its progress page sends staff back to the mapping, where it waits.
    detail = client.get(location.removesuffix("/mapping"))
    assert detail.status_code == 302 and detail.headers["Location"] == location


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (["id", "Created (UTC)", "Amount", "Currency"], {"failed_at": "created (utc)"}),
        (["id", "Customer Name", "Card Name", "Amount", "Currency"], {"customer_name": "customer name"}),
        (["id", "Customer Country", "Card Address Country"], {"customer_country": "customer country"}),
        (["transaction_ref", "amount_minor", "currency"], {"amount_minor": "amount_minor", "amount": None}),
        (["  Customer   Email ", "ID"], {"customer_email": "customer email", "transaction_ref": "id"}),
        (["Reference", "Total"], {"transaction_ref": "reference", "amount": None}),
    ],
)
def test_the_proposal_knows_our_names_and_stripes_variants(
    header: list[str], expected: dict[str, str]
) -> None:
    from recovery.imports import mapping as mappings

    proposal = mappings.propose(header)
    for field, column in expected.items():
        assert proposal.get(field) == column


def test_a_second_confirmation_of_the_same_upload_is_refused_not_run_twice(
    db: Any, make_org: Callable[..., Any]
) -> None:
    from recovery.audit import Actor
    from recovery.imports import mapping as mappings
    from recovery.imports import services

    organization = make_org()
    actor = Actor.system(organization.id, "test")
    data = stripe_export([stripe_row("ch_1", "Failed", "50.00")])
    csv_import = services.create_import(db.session, actor, "p.csv", data, 1 << 20)
    db.session.commit()
    chosen = mappings.propose(STRIPE_HEADER)
    services.confirm_mapping(db.session, actor, csv_import, chosen)
    db.session.commit()

    with pytest.raises(services.ImportRejected, match="already started"):
        services.confirm_mapping(db.session, actor, csv_import, chosen)
    db.session.rollback()
    events = db.session.scalars(select(AuditEvent.action).where(AuditEvent.action == "import.mapped")).all()
    assert events == ["import.mapped"]
