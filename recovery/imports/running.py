"""Running a confirmed CSV import: validate each row, insert the valid ones, chunk by chunk.

Each chunk is one database transaction that also advances the import's
counters, so a crash leaves no half-imported chunk and a re-run resumes after
the last committed one (its commit is named: `commit_now`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Json
from sqlalchemy import inspect, select

from recovery import money
from recovery.imports.amounts import parse_minor, parse_written
from recovery.imports.services import DROPPABLE, FAILED_STATUSES, MAX_PROBLEMS, ImportRejected, iter_rows
from recovery.logs import get_logger
from recovery.models import CsvImport, ImportStatus, Transaction, TransactionSource, utcnow
from recovery.models.base import DbSession, insert_ignoring_duplicates
from recovery.models.transaction import TransactionStatus
from recovery.transactions.validation import clean_transaction
from recovery.unit_of_work import commit_now

log = get_logger("recovery.imports")


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
    """Import (or resume) the file; commits once per chunk, the last one with the import's end.

    Safe to run twice: a re-run resumes after the last committed chunk.
    """
    csv_import = session.get(CsvImport, import_id)
    if csv_import is None:
        raise LookupError(f"import {import_id} not found")
    if csv_import.status == ImportStatus.DONE:
        return csv_import
    if csv_import.status == ImportStatus.MAPPING:
        raise ImportRejected("Confirm which column holds which field before importing.")
    csv_import.transition(ImportStatus.RUNNING)
    commit_now(session, "the import's page shows it running while its chunks go in")
    log.info("csv_import_started", import_id=import_id, rows=csv_import.total_rows)
    text = (csv_import.content or b"").decode("utf-8-sig")
    skip = csv_import.processed_rows
    chunk: list[tuple[int, dict[str, str]]] = []
    seen_refs = _refs_imported(session, csv_import) if skip else set()
    # A chunk commits once the next row is read, so the file's last chunk commits
    # with the import's end: one commit fewer, whether or not the rows fill it.
    uncommitted = False
    try:
        for index, row in enumerate(iter_rows(text, csv_import.mapping)):
            if index < skip:
                continue
            if uncommitted:
                commit_now(session, "each chunk is kept once done: a re-run resumes after it")
                uncommitted = False
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                _import_chunk(session, csv_import, chunk, seen_refs)
                chunk, uncommitted = [], True
        if chunk:
            _import_chunk(session, csv_import, chunk, seen_refs)
        csv_import.transition(ImportStatus.DONE)
        csv_import.finished_at = utcnow()
        csv_import.content = None
        # Kept loaded: whoever ran it reads the counters next, without a SELECT.
        commit_now(session, "the last chunk and the import's end, in one transaction", keep_state=True)
    except Exception as error:
        session.rollback()  # the chunk's rows go; the counters reload as last committed
        csv_import.transition(ImportStatus.FAILED)
        csv_import.error = f"{type(error).__name__}: {error}"[:1000]
        commit_now(session, "the failure is shown on the import's page, whoever ran it")
        log.exception("csv_import_failed", import_id=import_id, processed=csv_import.processed_rows)
        raise
    log.info(
        "csv_import_finished",
        import_id=import_id,
        imported=csv_import.imported_rows,
        duplicates=csv_import.duplicate_rows,
        invalid=csv_import.invalid_rows,
        skipped=csv_import.skipped_rows,
    )
    return csv_import


def _refs_imported(session: DbSession, csv_import: CsvImport) -> set[str]:
    """The refs this import inserted before a resume.

    Only those count as seen: a ref that was invalid there is no duplicate, just as in a single run.
    """
    return set(
        session.scalars(
            select(Transaction.transaction_ref).where(
                Transaction.organization_id == csv_import.organization_id,
                Transaction.import_id == csv_import.id,
            )
        )
    )


@dataclass
class RowVerdict:
    """What one row became: values to insert, or a refusal; warnings either way."""

    values: dict[str, Any] | None = None
    reason: str = ""
    skipped: bool = False
    warnings: list[str] | None = None


def _amount(cells: dict[str, str]) -> tuple[int | None, str]:
    """The row's amount in the smallest unit and no message, or None and why not."""
    try:
        currency = money.normalize_currency(cells.get("currency"))
    except money.AmountError:
        return None, ""  # the currency's own error says it; the amount's follows from it
    try:
        if "amount_minor" in cells:
            return parse_minor(cells["amount_minor"], currency), ""
        return parse_written(cells.get("amount", ""), currency), ""
    except money.AmountError as error:
        return None, str(error)


def clean_row(cells: dict[str, str]) -> RowVerdict:
    """Validate one mapped row by the rules every entry point shares, plus the file's own."""
    status = cells.get("status")
    if status is not None and status.strip().lower() not in FAILED_STATUSES:
        return RowVerdict(skipped=True)
    raw: dict[str, Any] = {k: v for k, v in cells.items() if k not in ("amount", "amount_minor", "status")}
    amount, amount_error = _amount(cells)
    if amount is not None:
        raw["amount"] = amount
    if raw.get("failure_code"):
        # Exports spell decline reasons as "Do not honor" or "do-not-honor": Stripe's code is do_not_honor.
        raw["failure_code"] = "_".join(raw["failure_code"].strip().lower().replace("-", " ").split())
    cleaned = clean_transaction(raw)
    errors = dict(cleaned.errors)
    if amount_error:
        errors["amount"] = amount_error
    warnings: list[str] = []
    dropped = [name for name in DROPPABLE if name in errors]
    hard = [name for name in errors if name not in DROPPABLE]
    reachable = any(cleaned.values.get(name) for name in ("customer_email", "customer_phone"))
    gave_contact = any((cells.get(name) or "").strip() for name in ("customer_email", "customer_phone"))
    if dropped and not hard and (reachable or not gave_contact):
        for name in dropped:
            cleaned.values[name] = None
            warnings.append(f"{name}: {errors.pop(name)} Imported without it.")
    if errors:
        return RowVerdict(reason="; ".join(f"{k}: {v}" for k, v in errors.items()), warnings=warnings)
    return RowVerdict(values=cleaned.values, warnings=warnings)


def _import_chunk(
    session: DbSession,
    csv_import: CsvImport,
    chunk: list[tuple[int, dict[str, str]]],
    seen_refs: set[str],
) -> None:
    """Validate and insert one chunk, and advance the counters; the caller commits them together.

    One function because the rows' verdicts, the insert and the counters share
    six tallies; split, each part would pass them all along.
    """
    now = utcnow()
    problems: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    line_of: dict[str, int] = {}
    duplicates = skipped = 0
    for line, cells in chunk:
        if "__error__" in cells:
            problems.append({"row": line, "ref": "", "reason": "The row " + cells["__error__"] + "."})
            continue
        verdict = clean_row(cells)
        if verdict.skipped:
            skipped += 1
            continue
        shown_ref = (cells.get("transaction_ref") or "")[:64]
        if verdict.values is None:
            problems.append({"row": line, "ref": shown_ref, "reason": verdict.reason})
            continue
        values = verdict.values
        ref = values["transaction_ref"]
        if ref in seen_refs:
            duplicates += 1
            problems.append(
                {"row": line, "ref": ref, "reason": "Duplicate: this reference appears earlier in the file."}
            )
            continue
        seen_refs.add(ref)
        line_of[ref] = line
        warnings.extend({"row": line, "ref": ref, "reason": w} for w in verdict.warnings or ())
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
    # A warning about a row that turned out a duplicate would describe nothing imported.
    warnings = [w for w in warnings if w["ref"] in inserted]
    invalid = len(problems) - duplicates
    csv_import.processed_rows += len(chunk)
    csv_import.imported_rows += len(inserted)
    csv_import.duplicate_rows += duplicates
    csv_import.invalid_rows += invalid
    csv_import.skipped_rows += skipped
    room = MAX_PROBLEMS - len(csv_import.problems or [])
    if room > 0 and problems:
        csv_import.problems = [*(csv_import.problems or []), *sorted(problems, key=lambda p: p["row"])[:room]]
    room = MAX_PROBLEMS - len(csv_import.warnings or [])
    if room > 0 and warnings:
        csv_import.warnings = [*(csv_import.warnings or []), *sorted(warnings, key=lambda p: p["row"])[:room]]
