"""CSV import of failed transactions: check the file, map its columns, then import it chunk by chunk.

A file is refused whole when it is too large, not UTF-8, or its header cannot
be read. Once staff confirm which column holds which field (`mapping`), every
row is validated on its own: valid rows are inserted, invalid rows and
duplicates are reported with their row number, rows whose status says the
payment did not fail are skipped and counted, and nothing valid is lost
because a neighbour was invalid. A contact detail that cannot be used (a
phone number no network routes) is left empty with a warning when the row
keeps another way to reach the customer. Each chunk is one database transaction
that also advances the import's counters, so a crash leaves no half-imported
chunk and a re-run resumes after the last committed one.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete

from recovery import audit
from recovery.audit import Actor
from recovery.imports import mapping as mappings
from recovery.logs import get_logger
from recovery.models import CsvImport, ImportStatus, utcnow
from recovery.models.base import DbSession
from recovery.refusals import Refused

log = get_logger("recovery.imports")

MAX_PROBLEMS = 1000  # listed row by row; beyond this only the counts grow
PREVIEW_ROWS = 5
# Stripe's payments export has ~50 columns; a header far wider is not a payments file,
# and each of the mapping page's selects lists every column.
MAX_COLUMNS = 200
# An upload nobody mapped is dropped after this: the file holds customers' details.
UNMAPPED_KEPT = timedelta(days=1)
# Contact details a row can lose and still be recovered, as long as it keeps an
# email or a phone. Country and language only refine how we write to them.
DROPPABLE = ("customer_email", "customer_phone", "customer_country", "customer_locale")
FAILED_STATUSES = frozenset({"failed"})


class ImportRejected(Refused):
    """The file as a whole cannot be imported; the message says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="csv")


@dataclass(frozen=True)
class CheckedFile:
    text: str
    header: list[str]
    total_rows: int


@dataclass(frozen=True)
class Preview:
    header: list[str]
    rows: list[list[str]]


def format_size(size: int) -> str:
    """A byte count for people: 20 MiB, 1.5 KiB, 900 bytes."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size:,} bytes"


def check_file(data: bytes, max_bytes: int) -> CheckedFile:
    """Refuse a file that is too large, not UTF-8, empty, or has an unreadable header."""
    if len(data) > max_bytes:
        # The upload view reads at most one byte past the limit: the real size is unknown.
        raise ImportRejected(
            f"The file is larger than the limit of {format_size(max_bytes)}. "
            "Split it into smaller files and upload each."
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImportRejected(
            f"The file is not UTF-8 text (byte {error.start + 1} cannot be read). "
            "Save it as 'CSV UTF-8' and upload it again."
        ) from None
    if "\x00" in text:
        raise ImportRejected("The file contains NUL bytes; it does not look like a CSV file.")
    # strict: an unclosed quote is an error, not a cell that swallows the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header_row = next(reader)
    except StopIteration:
        raise ImportRejected("The file is empty. The first line must be the header.") from None
    except csv.Error as error:
        raise ImportRejected(f"The header line cannot be read as CSV: {error}.") from None
    header = [name.strip() for name in header_row]
    check_header(header)
    try:
        total = sum(1 for row in reader if any(cell.strip() for cell in row))
    except csv.Error as error:
        raise ImportRejected(f"The file is not valid CSV: {error} (line {reader.line_num}).") from None
    if total == 0:
        raise ImportRejected("The file has a header but no rows.")
    return CheckedFile(text=text, header=header, total_rows=total)


def check_header(header: list[str]) -> None:
    """Refuse a header whose columns cannot be told apart; which column is which comes later."""
    names = [mappings.normalise(name) for name in header if name.strip()]
    if len(header) > MAX_COLUMNS:
        raise ImportRejected(
            f"The header has {len(header):,} columns; at most {MAX_COLUMNS} can be matched. "
            "Remove the columns you do not need and upload the file again."
        )
    if not names:
        raise ImportRejected("The first line must be a header naming the columns; it is empty.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ImportRejected(
            "The header is wrong: repeated " + ", ".join(repeated) + ". Give each column its own name."
        )


def create_import(
    session: DbSession,
    actor: Actor,
    filename: str,
    data: bytes,
    max_bytes: int,
    *,
    mapping: dict[str, str] | None = None,
) -> CsvImport:
    """Check the file and store it until its columns are mapped (raises ImportRejected).

    With `mapping` (the API and command line, which have no page to confirm
    on), its choices override the remembered or proposed mapping and the
    import is queued at once (raises MappingRefused). Also drops this
    organization's uploads left unmapped for a day.
    """
    checked = check_file(data, max_bytes)
    session.execute(
        delete(CsvImport).where(
            CsvImport.organization_id == actor.organization_id,
            CsvImport.status == ImportStatus.MAPPING,
            CsvImport.created_at < utcnow() - UNMAPPED_KEPT,
        )
    )
    csv_import = CsvImport(
        organization_id=actor.organization_id,
        user_id=actor.user_id,
        filename=(filename or "upload.csv")[:255],
        content=data,
        total_rows=checked.total_rows,
        status=ImportStatus.MAPPING,
    )
    session.add(csv_import)
    session.flush()
    audit.record(
        session,
        actor,
        "import.created",
        target_type="csv_import",
        target_id=csv_import.id,
        filename=csv_import.filename,
        rows=checked.total_rows,
    )
    if mapping is not None:
        header = header_of(csv_import)
        initial, _ = mappings.initial(session, actor.organization_id, header)
        confirm_mapping(session, actor, csv_import, {**initial, **mapping})
    return csv_import


def header_of(csv_import: CsvImport) -> list[str]:
    text = (csv_import.content or b"").decode("utf-8-sig")
    return [name.strip() for name in next(csv.reader(io.StringIO(text, newline="")), [])]


def preview(csv_import: CsvImport, rows: int = PREVIEW_ROWS) -> Preview:
    """The file's header and first non-blank rows, as the mapping page shows them."""
    reader = csv.reader(io.StringIO((csv_import.content or b"").decode("utf-8-sig"), newline=""))
    header = [name.strip() for name in next(reader, [])]
    first: list[list[str]] = []
    for row in reader:
        if len(first) >= rows:
            break
        if any(cell.strip() for cell in row):
            first.append(row)
    return Preview(header=header, rows=first)


def confirm_mapping(
    session: DbSession, actor: Actor, csv_import: CsvImport, chosen: dict[str, str]
) -> CsvImport:
    """Check the chosen mapping, remember it for this header, and queue the import.

    Raises MappingRefused (per field) and leaves the upload as it was, so the
    merchant can correct the choice without uploading again.
    """
    # Locked until the caller's commit: a second confirmation sent at the same time
    # waits, then finds the import started instead of starting it again.
    session.refresh(csv_import, with_for_update=True)
    if csv_import.status != ImportStatus.MAPPING:
        raise ImportRejected("This import has already started; its columns cannot be changed now.")
    header = header_of(csv_import)
    checked = mappings.check(header, chosen)
    csv_import.mapping = checked
    csv_import.transition(ImportStatus.QUEUED)
    mappings.remember(session, csv_import.organization_id, header, checked)
    audit.record(
        session,
        actor,
        "import.mapped",
        target_type="csv_import",
        target_id=csv_import.id,
        mapping=checked,
    )
    return csv_import


def iter_rows(text: str, mapping: dict[str, str] | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (row number as a spreadsheet shows it, cells by target field) for non-blank rows.

    Without a mapping (an import queued before mapping existed), the columns we
    recognise by name are used.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [mappings.normalise(name) for name in next(reader)]
    width = len(header)
    if mapping is None:
        mapping = mappings.propose(header)
    index = {target: header.index(column) for target, column in mapping.items() if column in header}
    # Records, not physical lines: a quoted cell with line breaks is still one row of the
    # sheet, and a blank line is one too (the header is row 1).
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != width:
            yield line, {"__error__": f"has {len(row)} cells; the header has {width}"}
            continue
        yield line, {target: row[at] for target, at in index.items()}
