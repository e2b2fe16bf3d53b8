"""Build CSV files of failed transactions for the import tests."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any

from recovery.money import format_major

HEADER = (
    "transaction_ref",
    "amount",
    "currency",
    "customer_name",
    "customer_email",
    "customer_phone",
    "customer_country",
    "failure_code",
    "failed_at",
)


def row(n: int, prefix: str = "CSV", **overrides: Any) -> dict[str, Any]:
    """A valid row, distinct for each `n`; its amount is 1000 + n in the smallest unit."""
    currency = overrides.get("currency") or ("usd", "eur", "gbp", "jpy")[n % 4]
    return {
        "transaction_ref": f"{prefix}-{n:06d}",
        "amount": format_major(1000 + n, currency.lower()),
        "currency": currency,
        "customer_name": f"Customer {n}",
        "customer_email": f"customer{n}@example.com",
        "customer_phone": f"+1415555{n % 10000:04d}",
        "customer_country": "US",
        "failure_code": "card_declined",
        "failed_at": "2025-01-19T10:00:00Z",
        **overrides,
    }


def rows(count: int, prefix: str = "CSV", start: int = 1) -> list[dict[str, Any]]:
    return [row(n, prefix) for n in range(start, start + count)]


def csv_text(records: Iterable[Mapping[str, Any]], header: Iterable[str] = HEADER) -> str:
    header = list(header)
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for record in records:
        writer.writerow([record.get(name, "") for name in header])
    return out.getvalue()


def csv_bytes(
    records: Iterable[Mapping[str, Any]],
    header: Iterable[str] = HEADER,
    *,
    bom: bool = False,
    encoding: str = "utf-8",
) -> bytes:
    data = csv_text(records, header).encode(encoding)
    return (b"\xef\xbb\xbf" + data) if bom else data
