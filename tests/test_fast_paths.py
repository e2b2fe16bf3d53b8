"""The import's fast paths answer exactly what the slow ones answer.

Email: the plain-address shortcut against email-validator itself, on many near
misses. Phone and locale: a remembered verdict, refusals included. The CSV
insert by COPY (PostgreSQL) against the multi-row INSERT (SQLite): same rows,
same values, ids in the file's order.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select

from recovery.audit import Actor
from recovery.imports import running, services
from recovery.models import Organization, Transaction
from recovery.transactions import validation
from tests.fixtures.csvdata import HEADER, csv_bytes, row

PIECES = ["ab", "cd", "x1", "Q", "7", "mail", "shop"] * 3 + [
    "a", "Z", "0", ".", "-", "_", "+", "xn--", "--", "ab--", "com", "test", "onion", "local",
    "arpa", "invalid", "localhost", "x" * 63, "y" * 64, "é", "co", "ORG", "'", "!", " ", "a.", ".a",
]  # fmt: skip


def reference_email(text: str) -> str:
    """What clean_email answered before the shortcut: email-validator on every address."""
    try:
        return validate_email(text, check_deliverability=False).normalized.lower()
    except EmailNotValidError as error:
        return f"refused: {error}"


def cleaned_email(text: str) -> str:
    try:
        return validation.clean_email(text) or ""
    except ValueError as error:
        return f"refused: {error}"


def test_the_plain_address_shortcut_agrees_with_email_validator() -> None:
    rng = random.Random(2025)

    def part(n: int) -> str:
        return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, n)))

    shortcut = 0
    for _ in range(10_000):
        text = part(4) + "@" + ".".join(part(3) for _ in range(rng.randint(1, 4)))
        if len(text) > validation.MAX_LENGTHS["customer_email"] or text != text.strip():
            continue
        shortcut += validation._is_plain_email(text)
        assert cleaned_email(text) == reference_email(text), text
    assert shortcut > 200  # the corpus does exercise the shortcut


@pytest.mark.parametrize(
    "text",
    [
        "Ann.Lee+bills@Example.COM",
        "a@b.co",
        "x@localhost.test",  # special-use: refused by both
        "x@shop.onion",
        "x@ab--cd.com",  # reserved label
        "x@xn--bcher-kva.example",  # punycode: left to email-validator
        "a..b@example.com",
        "a@example.c0m",
        "a@-example.com",
        f"{'a' * 64}@example.com",
        f"{'a' * 65}@example.com",
        f"a@{'b' * 63}.com",
        f"a@{'b' * 64}.com",
        "müller@example.de",
    ],
)
def test_edge_addresses_get_the_same_answer(text: str) -> None:
    assert cleaned_email(text) == reference_email(text)


def test_remembered_verdicts_still_refuse_every_time() -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="not a valid phone number"):
            validation.clean_phone("+1 202 555 01", "US")
        with pytest.raises(ValueError, match="not a known locale"):
            validation.clean_locale("xx-QQ")
        with pytest.raises(ValueError, match="@-sign"):
            validation.clean_email("ann@")
    assert validation.clean_phone("020 7946 0958", "GB") == "+442079460958"
    assert validation.clean_phone("020 7946 0958", "GB") == "+442079460958"
    assert validation.clean_locale("de-DE") == "de-DE"


def test_imported_rows_keep_every_value_and_the_files_order(db: Any, make_org: Any) -> None:
    organization: Organization = make_org()
    records = [
        row(3, metadata=json.dumps({"order_id": "ORD-3", "gift": True, "n": 2})),
        row(1, customer_phone="", customer_name="", failed_at="2025-01-19", customer_locale="de-DE"),
        row(2, amount="12.50", currency="BHD", customer_email="Zoe@Example.COM"),
    ]
    header = [*HEADER, "customer_locale", "metadata"]
    csv_import = services.create_import(
        db.session,
        Actor.system(organization.id),
        "order.csv",
        csv_bytes(records, header),
        1 << 20,
        mapping={},
    )
    db.session.commit()

    running.run_import(db.session, csv_import.id, chunk_rows=2)

    imported = db.session.scalars(select(Transaction).order_by(Transaction.id)).all()
    assert [t.transaction_ref for t in imported] == ["CSV-000003", "CSV-000001", "CSV-000002"]
    first, second, third = imported
    assert first.meta == {"order_id": "ORD-3", "gift": True, "n": 2}
    assert second.meta == {}
    assert (second.customer_phone, second.customer_name, second.customer_locale) == (None, None, "de-DE")
    assert second.failed_at.isoformat() == "2025-01-19T00:00:00+00:00"
    assert (third.amount, third.currency, third.customer_email) == (12500, "bhd", "zoe@example.com")
    assert {t.import_id for t in imported} == {csv_import.id}
    assert {(t.source, t.status) for t in imported} == {("csv", "failed")}
    assert all(t.created_at is not None and t.created_at == t.updated_at for t in imported)
