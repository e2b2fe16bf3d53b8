"""What an imported row costs, part by part: the floor under the import's rows/s.

    .venv/bin/python -m bench.seed_transactions      # once: the list's million rows
    .venv/bin/python -m bench.import_csv --repeat 1  # leaves the file's rows in `bench-import`
    .venv/bin/python -m bench.import_costs

1. Reading the CSV (`iter_rows`): µs a row, wall clock, one core.
2. Validating the rows as the import does (`clean_transaction`), in this fresh
   process so nothing is remembered yet: µs a row of CPU.
3. PostgreSQL storing them: the rows the last import stored, INSERTed again
   under new references in one statement with EXPLAIN ANALYZE, then rolled
   back: µs a row of server time, foreign-key triggers included. The table
   keeps every index the list needs.

Then the sum, and the rows/s that two cores could reach if they did nothing
else, against the target of 50,000 rows/s.
"""

from __future__ import annotations

import json
import time

from bench import common
from bench.import_csv import IMPORT_SLUG, csv_file
from recovery.imports.services import iter_rows

clean_row = common.first_of("recovery.imports.running:clean_row", "recovery.imports.services:clean_row")

TARGET_ROWS_PER_S = 50_000
CORES = 2


def read_and_validate(rows: int) -> tuple[float, float, int]:
    text = csv_file(rows).read_text(encoding="utf-8-sig")
    started = time.perf_counter()
    parsed = list(iter_rows(text))
    read_us = (time.perf_counter() - started) * 1e6 / len(parsed)
    cpu = time.process_time()
    valid = sum(clean_row(cells).values is not None for _, cells in parsed if "__error__" not in cells)
    validate_us = (time.process_time() - cpu) * 1e6 / len(parsed)
    return read_us, validate_us, valid


def store_us() -> tuple[float, int, dict[str, float]]:
    """Server time a row to INSERT the last import's rows again (rolled back)."""
    with common.raw_connection() as conn:
        row = conn.execute("SELECT id FROM organization WHERE slug = %s", (IMPORT_SLUG,)).fetchone()
        if row is None:
            raise SystemExit("No import yet: run `python -m bench.import_csv --repeat 1` first.")
        conn.execute(
            "CREATE TEMPORARY TABLE again ON COMMIT DROP AS"
            " SELECT * FROM transaction WHERE organization_id = %s",
            (row[0],),
        )
        count = conn.execute(
            "UPDATE again SET id = nextval('transaction_id_seq'),"
            " transaction_ref = 'AGAIN-' || transaction_ref"
        ).rowcount
        if not count:
            raise SystemExit(
                "The import organization is empty: run `python -m bench.import_csv --repeat 1` first."
            )
        conn.execute("ANALYZE again")
        (plan,) = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) INSERT INTO transaction SELECT * FROM again"
        ).fetchone()
        conn.rollback()
    report = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
    triggers = {t.get("Constraint Name", t["Trigger Name"]): t["Time"] for t in report.get("Triggers", [])}
    return report["Execution Time"] * 1000 / count, count, triggers


def main() -> None:
    common.ensure_database()
    busy = common.idle_check()
    read_us, validate_us, valid = read_and_validate(100_000)
    insert_us, stored, triggers = store_us()
    total = read_us + validate_us + insert_us
    ceiling = CORES * 1e6 / total
    print(f"read the CSV:        {read_us:6.1f} µs a row (wall)")
    print(f"validate the rows:   {validate_us:6.1f} µs a row (CPU; {valid:,} valid)")
    print(f"PostgreSQL INSERT:   {insert_us:6.1f} µs a row (server, {stored:,} rows; triggers {triggers} ms)")
    print(f"sum:                 {total:6.1f} µs a row")
    print(
        f"{CORES} cores doing nothing else: at most {ceiling:,.0f} rows/s "
        f"(target {TARGET_ROWS_PER_S:,}; the target needs ≤ {CORES * 1e6 / TARGET_ROWS_PER_S:.0f} µs a row)"
    )
    path = common.write_json(
        "import_costs",
        {
            "busy_before_percent": round(busy, 1),
            "read_us": round(read_us, 2),
            "validate_us": round(validate_us, 2),
            "insert_us": round(insert_us, 2),
            "rows_stored": stored,
            "trigger_ms": triggers,
            "ceiling_rows_per_s": round(ceiling),
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
