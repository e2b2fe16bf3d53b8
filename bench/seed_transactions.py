"""Load one organization with a million transactions, by COPY, for the list benchmark.

    .venv/bin/python -m bench.seed_transactions [--rows 1000000] [--reset]

Creates the database (BENCH_DATABASE_URL, default recovery_bench on
127.0.0.1:5432) if missing, upgrades it to the migrations' head, creates the
`bench` organization and its owner (owner@bench.example / bench-password-1),
then COPYs the rows in one transaction and runs VACUUM ANALYZE. Safe to run
twice: an organization that already has its rows is left alone.

The data is deterministic (fixed random seed) and shaped like a real merchant's:
ids are not in failure-date order, ~60% of rows are still `failed`, every
customer has rows // 250,000 transactions (4 with a million rows).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import common
from recovery import demo

STATUSES = {"failed": 60, "recovering": 10, "recovered": 15, "unrecovered": 10, "cancelled": 4, "refunded": 1}
# currency, country, locale, weight
MARKETS = [
    ("usd", "US", "en-US", 40),
    ("eur", "DE", "de-DE", 25),
    ("gbp", "GB", "en-GB", 15),
    ("jpy", "JP", "ja-JP", 8),
    ("cad", "CA", "en-CA", 5),
    ("aud", "AU", "en-AU", 4),
    ("chf", "CH", "de-CH", 1),
    ("bhd", "BH", "ar-BH", 1),
    ("kwd", "KW", "ar-KW", 1),
]
FAILURES = demo.FAILURES  # the same codes and messages as the demo data
COLUMNS = (
    "organization_id",
    "transaction_ref",
    "amount",
    "currency",
    "status",
    "failure_code",
    "failure_message",
    "customer_name",
    "customer_email",
    "customer_phone",
    "customer_country",
    "customer_locale",
    "metadata",
    "source",
    "stripe_payment_intent_id",
    "failed_at",
    "created_at",
    "updated_at",
    "recovered_at",
)
SPAN = timedelta(days=730)


def rows(organization_id: int, count: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    """Yield `count` COPY rows; the same rows for the same `count` on every run."""
    rng = random.Random(2025)
    statuses = rng.choices(list(STATUSES), weights=list(STATUSES.values()), k=count)
    markets = rng.choices(MARKETS, weights=[m[3] for m in MARKETS], k=count)
    for i in range(count):
        currency, country, locale, _ = markets[i]
        status = statuses[i]
        customer = i % common.CUSTOMERS
        code, message = FAILURES[i % len(FAILURES)]
        failed_at = now - SPAN * rng.random()
        created_at = failed_at + timedelta(seconds=rng.uniform(0, 60))
        recovered_at = None
        if status in ("recovered", "refunded"):
            recovered_at = min(now, failed_at + timedelta(hours=rng.uniform(1, 168)))
        amount = rng.randrange(500, 50_000) if currency != "jpy" else rng.randrange(500, 30_000)
        from_stripe = i % 5 != 0
        yield (
            organization_id,
            f"BENCH-{i:07d}",
            amount,
            currency,
            status,
            code,
            message,
            f"Customer {customer}",
            f"customer{customer:06d}@example.com",
            f"+447700{customer:06d}",
            country,
            locale,
            json.dumps({"order_id": f"ORD-{i:07d}"}),
            "stripe" if from_stripe else "api",
            f"pi_bench{i:07d}" if from_stripe else None,
            failed_at,
            created_at,
            created_at,
            recovered_at,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reset", action="store_true", help="delete the organization's transactions first")
    args = parser.parse_args()

    common.ensure_database()
    app = common.make_app()
    common.ensure_schema(app)
    organization_id = common.ensure_org_and_user(app)
    with common.raw_connection() as conn:
        if args.reset:
            conn.execute("DELETE FROM transaction WHERE organization_id = %s", (organization_id,))
        existing = conn.execute(
            "SELECT count(*) FROM transaction WHERE organization_id = %s", (organization_id,)
        ).fetchone()[0]
        if existing >= args.rows:
            print(f"Organization {common.ORG_SLUG!r} already has {existing:,} transactions; nothing to do.")
            return
        if existing:
            raise SystemExit(f"{existing:,} rows already there, fewer than {args.rows:,}: run with --reset.")
        started = time.perf_counter()
        now = datetime.now(UTC)
        with (
            conn.cursor() as cursor,
            cursor.copy(f"COPY transaction ({', '.join(COLUMNS)}) FROM STDIN") as copy,
        ):
            for row in rows(organization_id, args.rows, now):
                copy.write_row(row)
        conn.commit()
        loaded = time.perf_counter() - started
    with common.raw_connection(autocommit=True) as conn:
        vacuum_started = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) transaction")
        vacuumed = time.perf_counter() - vacuum_started
    print(
        f"Loaded {args.rows:,} transactions into {common.ORG_SLUG!r} in {loaded:.1f} s "
        f"({args.rows / loaded:,.0f} rows/s); VACUUM ANALYZE {vacuumed:.1f} s."
    )
    print(f"Sign in as {common.USER_EMAIL} / {common.PASSWORD}; search e.g. {common.SEARCH_EMAIL}.")


if __name__ == "__main__":
    main()
