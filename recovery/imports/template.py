"""The template CSV merchants can download: our column names and one example row per currency.

Built from the same column list and amount rule the importer reads, so the
template always imports as it is (a test uploads it).
"""

from __future__ import annotations

import csv
import io

from recovery.imports.mapping import TARGET_NAMES

# The status and amount_minor columns are for other files' shapes: a template row is a
# failed payment, and its amount is written as people write it.
COLUMNS = tuple(name for name in TARGET_NAMES if name not in ("amount_minor", "status"))

EXAMPLES = (
    ("TXN-1001", "50.00", "usd", "John Smith", "john@example.com", "+14155550123", "US", "en-US",
     "insufficient_funds", "Your card has insufficient funds.", "2026-01-19T10:00:00Z",
     '{"order_id": "ORD-1001"}'),
    ("TXN-1002", "1234.50", "eur", "Hans Müller", "hans@example.com", "+4915112345678", "DE", "de-DE",
     "expired_card", "Your card has expired.", "2026-01-19", ""),
    ("TXN-1003", "29.99", "gbp", "Olivia Brown", "olivia@example.com", "+442079460958", "GB", "en-GB",
     "card_declined", "Your card was declined.", "2026-01-20T08:30:00+00:00", ""),
    ("TXN-1004", "5000", "jpy", "Yuki Tanaka", "yuki@example.com", "+819012345678", "JP", "ja-JP",
     "do_not_honor", "", "2026-01-20", ""),
    ("TXN-1005", "12.500", "bhd", "Omar Haddad", "omar@example.com", "+97336001234", "BH", "ar-BH",
     "generic_decline", "", "2026-01-21", ""),
)  # fmt: skip


def template_csv() -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    writer.writerows(EXAMPLES)
    return out.getvalue()
