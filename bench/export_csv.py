"""Memory of a CSV export: the peak RSS growth of streaming 100,000 rows against 1,000,000.

    .venv/bin/python -m bench.export_csv [--small 100000] [--large 1000000]

Seeds two organizations in its own database (BENCH_DATABASE_URL, default
recovery_bench_export on 127.0.0.1:5432), one with `--small` transactions and
one with `--large`, by one INSERT … SELECT FROM generate_series each (skipped
when they are there already). Then, for each, a fresh Python process streams
the organization's whole transactions export (the service the download
calls: server-side cursor, CSV chunks) and throws the text away, and reports
its peak resident memory (getrusage's ru_maxrss) above what it had before the
export began, after a warm-up export of a few rows; then streams it again under
tracemalloc for the peak of Python's own allocations. Constant memory means the
two peaks are about the same: the ratio large/small stays near 1, where a file
built in memory would grow ten times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

os.environ.setdefault("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/recovery_bench_export")

import sqlalchemy as sa

from bench import common

SEED = """
INSERT INTO "transaction" (
    organization_id, transaction_ref, amount, currency, status, failure_code, failure_message,
    customer_name, customer_email, customer_phone, customer_country, customer_locale, metadata,
    source, failed_at, created_at, updated_at
)
SELECT :org, 'EXP-' || lpad(g::text, 7, '0'), 100 + g % 100000, (ARRAY['usd', 'eur', 'jpy'])[1 + g % 3],
       'failed', 'card_declined', 'Your card was declined.', 'Customer ' || g,
       'customer' || g || '@example.com', '+1415555' || lpad((g % 10000)::text, 4, '0'), 'US', 'en-US',
       json_build_object('order_id', 'ORD-' || g), 'csv',
       now() - make_interval(mins => g), now(), now()
FROM generate_series(1, :rows) AS g
"""


def seed(rows: int) -> int:
    """The id of an organization holding exactly `rows` transactions, made if missing."""
    from recovery.extensions import db

    slug = f"export-{rows}"
    app = common.make_app()
    organization_id = common.ensure_org_and_user(app, slug, f"Export {rows:,}", f"owner@{slug}.example")
    with app.app_context():
        have = db.session.scalar(
            sa.text('SELECT count(*) FROM "transaction" WHERE organization_id = :o'), {"o": organization_id}
        )
        if have != rows:
            started = time.monotonic()
            db.session.execute(
                sa.text('DELETE FROM "transaction" WHERE organization_id = :o'), {"o": organization_id}
            )
            db.session.execute(sa.text(SEED), {"org": organization_id, "rows": rows})
            db.session.commit()
            print(f"seeded {rows:,} rows in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return organization_id


def measure(organization_id: int) -> dict[str, float]:
    """Stream the organization's export once (in this process); its peak RSS growth and speed."""
    from recovery.audit import Actor
    from recovery.exports import services
    from recovery.extensions import db

    app = common.make_app()
    actor = Actor.system(organization_id, "bench")

    def run(args: dict[str, str]) -> tuple[int, int]:
        export = services.transactions_export(db.session, organization_id, args)
        size = chunks = 0
        for chunk in services.stream(db.session, actor, export):
            size += len(chunk)
            chunks += 1
        return size, chunks

    with app.app_context():
        run({"q": "EXP-000100"})  # warm-up: imports, the query's plan, the pool (a few rows)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        size, chunks = run({})
        seconds = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Again under tracemalloc: the peak of Python's own allocations, to the byte.
        tracemalloc.start()
        run({})
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {
        "rss_before_mb": before / 1024,
        "peak_growth_kb": after - before,
        "traced_peak_kb": traced_peak / 1024,
        "seconds": seconds,
        "megabytes_written": size / 1e6,
        "chunks": chunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # the child: organization id
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure)))
        return

    common.ensure_database()
    common.ensure_schema(common.make_app())
    results = {}
    for rows in (args.small, args.large):
        organization_id = seed(rows)
        child = subprocess.run(
            [sys.executable, "-m", "bench.export_csv", "--measure", str(organization_id)],
            check=True,
            capture_output=True,
            text=True,
            cwd=common.ROOT,
        )
        results[rows] = json.loads(child.stdout.strip().splitlines()[-1])
        r = results[rows]
        print(
            f"{rows:>9,} rows: peak RSS +{r['peak_growth_kb']:,} KB (from {r['rss_before_mb']:.0f} MB), "
            f"Python's peak allocations {r['traced_peak_kb']:,.0f} KB; "
            f"{r['megabytes_written']:.0f} MB of CSV in {r['seconds']:.1f} s "
            f"({rows / r['seconds']:,.0f} rows/s, {r['chunks']:,} chunks)"
        )
    small, large = (results[n]["traced_peak_kb"] for n in (args.small, args.large))
    print(f"ratio of peak allocations, {args.large:,} / {args.small:,} rows: {large / small:.2f}")
    common.write_json("export_csv", {str(k): v for k, v in results.items()})


if __name__ == "__main__":
    main()
