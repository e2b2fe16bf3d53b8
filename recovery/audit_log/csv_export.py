"""A small streaming CSV writer, safe to open in a spreadsheet.

Written here rather than shared while the transactions export's helper is
being written alongside (issue 16): the two do the same job and should merge.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence

# A cell starting with one of these is a formula to Excel, LibreOffice and
# Google Sheets ("=HYPERLINK(...)", "@SUM(...)", "+1+cmd|..."): OWASP's CSV
# injection advice is to make it text with a leading apostrophe.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def neutralise(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def rows_as_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Iterator[str]:
    """Yield the CSV a chunk of lines at a time: the header, then each row, every cell neutralised.

    A UTF-8 byte-order mark first, so Excel reads accents and non-Latin names right.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    buffer.write("\ufeff")
    writer.writerow([neutralise(cell) for cell in header])
    for count, row in enumerate(rows, 1):
        writer.writerow([neutralise(cell) for cell in row])
        if count % 200 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
