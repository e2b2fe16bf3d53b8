"""CSV import of failed transactions: check the file, then import it chunk by chunk.

A file is refused whole when it is too large, not UTF-8, or its header is wrong.
Otherwise every row is validated on its own: valid rows are inserted, invalid
rows and duplicates are reported with their row number, and nothing valid is
lost because a neighbour was invalid. Each chunk is one database transaction
that also advances the import's counters, so a crash leaves no half-imported
chunk and a re-run resumes after the last committed one.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Json
from sqlalchemy import inspect, select

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import CsvImport, ImportStatus, Transaction, TransactionSource, utcnow
from recovery.models.base import DbSession, insert_ignoring_duplicates
from recovery.models.transaction import TransactionStatus
from recovery.transactions.validation import clean_transaction

log = get_logger("recovery.imports")

REQUIRED_COLUMNS = ("transaction_ref", "amount", "currency")
OPTIONAL_COLUMNS = (
    "customer_name",
    "customer_email",
    "customer_phone",
    "customer_country",
    "customer_locale",
    "failure_code",
    "failure_message",
    "failed_at",
    "metadata",
)
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
MAX_PROBLEMS = 1000  # listed row by row; beyond this only the counts grow


class ImportRejected(Exception):
    """The file as a whole cannot be imported; the message says why and what to do."""


@dataclass(frozen=True)
class CheckedFile:
    text: str
    header: list[str]
    total_rows: int


def format_size(size: int) -> str:
    """A byte count for people: 20 MiB, 1.5 KiB, 900 bytes."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size:,} bytes"


def check_file(data: bytes, max_bytes: int) -> CheckedFile:
    """Refuse a file that is too large, not UTF-8, empty, or has a wrong header."""
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
    header = [name.strip().lower() for name in header_row]
    check_header(header)
    try:
        total = sum(1 for row in reader if any(cell.strip() for cell in row))
    except csv.Error as error:
        raise ImportRejected(f"The file is not valid CSV: {error} (line {reader.line_num}).") from None
    if total == 0:
        raise ImportRejected("The file has a header but no rows.")
    return CheckedFile(text=text, header=header, total_rows=total)


def check_header(header: list[str]) -> None:
    expected = "Expected columns: " + ", ".join(COLUMNS) + f" (the first {len(REQUIRED_COLUMNS)} required)."
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    unknown = [name for name in header if name not in COLUMNS]
    repeated = sorted({name for name in header if header.count(name) > 1})
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if unknown:
        problems.append("unknown " + ", ".join(repr(n) for n in unknown))
    if repeated:
        problems.append("repeated " + ", ".join(repeated))
    if problems:
        raise ImportRejected("The header is wrong: " + "; ".join(problems) + ". " + expected)


def create_import(session: DbSession, actor: Actor, filename: str, data: bytes, max_bytes: int) -> CsvImport:
    """Check the file and store it as a queued import (raises ImportRejected)."""
    checked = check_file(data, max_bytes)
    csv_import = CsvImport(
        organization_id=actor.organization_id,
        user_id=actor.user_id,
        filename=(filename or "upload.csv")[:255],
        content=data,
        total_rows=checked.total_rows,
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
    return csv_import


def iter_rows(text: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (row number as a spreadsheet shows it, cells by column) for non-blank rows."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip().lower() for name in next(reader)]
    width = len(header)
    # Records, not physical lines: a quoted cell with line breaks is still one row of the
    # sheet, and a blank line is one too (the header is row 1).
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != width:
            yield line, {"__error__": f"has {len(row)} cells; the header has {width}"}
            continue
        yield line, dict(zip(header, row, strict=True))


def _insert_statement(session: DbSession) -> Any:
    stmt = insert_ignoring_duplicates(session, Transaction, ["organization_id", "transaction_ref"])
    return stmt.returning(Transaction.transaction_ref)


def _insert_rows(session: DbSession, records: list[dict[str, Any]]) -> set[str]:
    """Insert the records, skipping refs the organization already has; return the refs inserted."""
    if session.get_bind().dialect.name == "postgresql":
        return _copy_rows(session, records)
    return set(session.scalars(_insert_statement(session), records))


def _copy_rows(session: DbSession, records: list[dict[str, Any]]) -> set[str]:
    """PostgreSQL: COPY into a temporary table, then one INSERT ... ON CONFLICT DO NOTHING.

    The same rows and answer as the multi-row INSERT, in the same transaction,
    but several times faster: that INSERT carries a bound parameter per cell,
    which the driver parses and converts one by one. `position` keeps the
    file's order in the ids.
    """
    keys = list(records[0])
    attrs = inspect(Transaction).attrs
    columns = sql.SQL(", ").join(sql.Identifier(attrs[key].columns[0].name) for key in keys)
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor:
        cursor.execute(
            sql.SQL(
                "CREATE TEMPORARY TABLE import_rows ON COMMIT DROP AS "
                "SELECT {columns}, 0 AS position FROM transaction WITH NO DATA"
            ).format(columns=columns)
        )
        cursor.execute("SELECT * FROM import_rows LIMIT 0")
        types = [column.type_code for column in cursor.description or ()]
        copy_sql = sql.SQL("COPY import_rows ({columns}, position) FROM STDIN (FORMAT BINARY)")
        with cursor.copy(copy_sql.format(columns=columns)) as copy:
            copy.set_types(types)
            for position, record in enumerate(records):
                values = (Json(record[key]) if key == "meta" else record[key] for key in keys)
                copy.write_row([*values, position])
        cursor.execute(
            sql.SQL(
                "INSERT INTO transaction ({columns}) SELECT {columns} FROM import_rows ORDER BY position "
                "ON CONFLICT (organization_id, transaction_ref) DO NOTHING RETURNING transaction_ref"
            ).format(columns=columns)
        )
        return {ref for (ref,) in cursor.fetchall()}


def run_import(session: DbSession, import_id: int, chunk_rows: int) -> CsvImport:
    """Import (or resume) the file; commits once per chunk. Safe to run twice."""
    csv_import = session.get(CsvImport, import_id)
    if csv_import is None:
        raise LookupError(f"import {import_id} not found")
    if csv_import.status == ImportStatus.DONE:
        return csv_import
    csv_import.transition(ImportStatus.RUNNING)
    session.commit()
    log.info("csv_import_started", import_id=import_id, rows=csv_import.total_rows)
    text = (csv_import.content or b"").decode("utf-8-sig")
    skip = csv_import.processed_rows
    chunk: list[tuple[int, dict[str, str]]] = []
    # On a resume, the rows skipped count as seen only if this import inserted
    # them: a ref that was invalid there is no duplicate, just as in a single run.
    seen_refs: set[str] = set()
    if skip:
        seen_refs = set(
            session.scalars(
                select(Transaction.transaction_ref).where(
                    Transaction.organization_id == csv_import.organization_id,
                    Transaction.import_id == import_id,
                )
            )
        )
    try:
        for index, row in enumerate(iter_rows(text)):
            if index < skip:
                continue
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                _import_chunk(session, csv_import, chunk, seen_refs)
                chunk = []
        if chunk:
            _import_chunk(session, csv_import, chunk, seen_refs)
    except Exception as error:
        session.rollback()  # the chunk's rows go; the counters reload as last committed
        csv_import.transition(ImportStatus.FAILED)
        csv_import.error = f"{type(error).__name__}: {error}"[:1000]
        session.commit()
        log.exception("csv_import_failed", import_id=import_id, processed=csv_import.processed_rows)
        raise
    csv_import.transition(ImportStatus.DONE)
    csv_import.finished_at = utcnow()
    csv_import.content = None
    session.commit()
    log.info(
        "csv_import_finished",
        import_id=import_id,
        imported=csv_import.imported_rows,
        duplicates=csv_import.duplicate_rows,
        invalid=csv_import.invalid_rows,
    )
    return csv_import


def _import_chunk(
    session: DbSession,
    csv_import: CsvImport,
    chunk: list[tuple[int, dict[str, str]]],
    seen_refs: set[str],
) -> None:
    """Validate and insert one chunk, and advance the counters, in one transaction."""
    now = utcnow()
    problems: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    line_of: dict[str, int] = {}
    duplicates = 0
    for line, cells in chunk:
        if "__error__" in cells:
            problems.append({"row": line, "ref": "", "reason": "The row " + cells["__error__"] + "."})
            continue
        cleaned = clean_transaction(cells)
        if not cleaned.ok:
            reason = "; ".join(f"{k}: {v}" for k, v in cleaned.errors.items())
            problems.append({"row": line, "ref": cells.get("transaction_ref", "")[:64], "reason": reason})
            continue
        values = cleaned.values
        ref = values["transaction_ref"]
        if ref in seen_refs:
            duplicates += 1
            problems.append(
                {"row": line, "ref": ref, "reason": "Duplicate: this reference appears earlier in the file."}
            )
            continue
        seen_refs.add(ref)
        line_of[ref] = line
        values["meta"] = values.pop("metadata")
        values.setdefault("failed_at", now)
        records.append(
            {
                **values,
                "organization_id": csv_import.organization_id,
                "status": TransactionStatus.FAILED,
                "source": TransactionSource.CSV,
                "import_id": csv_import.id,
                "created_at": now,
                "updated_at": now,
            }
        )
    inserted: set[str] = set()
    if records:
        inserted = _insert_rows(session, records)
    for ref in sorted(set(line_of) - inserted, key=line_of.__getitem__):
        duplicates += 1
        problems.append(
            {
                "row": line_of[ref],
                "ref": ref,
                "reason": "Duplicate: a transaction with this reference already exists.",
            }
        )
    invalid = len(problems) - duplicates
    csv_import.processed_rows += len(chunk)
    csv_import.imported_rows += len(inserted)
    csv_import.duplicate_rows += duplicates
    csv_import.invalid_rows += invalid
    room = MAX_PROBLEMS - len(csv_import.problems or [])
    if room > 0 and problems:
        csv_import.problems = [*(csv_import.problems or []), *sorted(problems, key=lambda p: p["row"])[:room]]
    session.commit()
