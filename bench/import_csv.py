"""Import a 100,000-row CSV through the RQ job while the list page is under light load.

    .venv/bin/python -m bench.seed_transactions      # once: the list's million rows
    .venv/bin/python -m bench.import_csv [--rows 100000] [--rate 20] [--seconds 15] [--repeat 3]

1. Writes bench/out/import-<rows>.csv (deterministic: realistic rows, 1% with a bad
   value: half refused (currency, amount), half imported with a warning (email, phone),
   0.5% repeated references, half the customers appearing twice).
2. Starts gunicorn (2 sync workers) and measures the list's first page under a
   light paced load (8 signed-in clients, `--rate` requests/s in all): the
   baseline p50/p95/p99.
3. Stores the file as an import of the `bench-import` organization (emptied
   first), enqueues `recovery.imports.jobs.import_csv` on Redis, and runs a real
   worker (`flask --app wsgi worker --burst`, as the Procfile runs it; `--nice N`
   runs it under `nice -n N`) while the same light load goes on.
   Rows/s is the file's rows over the job's own csv_import_started →
   csv_import_finished interval (its log lines); the list latency is taken over
   the requests sent inside that interval.
4. Repeats 2-3 (`--repeat`, 3 by default) and pools the latencies: one import
   lasts ~10 s, a few hundred requests, too few for a steady p99.
Results go to bench/out/import_csv-*.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common
from recovery.imports.template import COLUMNS
from recovery.money import format_major

IMPORT_SLUG = "bench-import"
IMPORT_EMAIL = "owner@bench-import.example"
HEADER = list(COLUMNS)  # every column the importer knows, in its order
# currency, country, locale, weight, and how a customer's phone is written there
MARKETS: list[tuple[str, str, str, int, Callable[[int], str]]] = [
    ("usd", "US", "en-US", 45, lambda c: f"+1 415 {200 + c // 10_000 % 800:03d} {c % 10_000:04d}"),
    ("eur", "DE", "de-DE", 20, lambda c: f"+49 151 {c:08d}"),
    ("gbp", "GB", "en-GB", 15, lambda c: f"07911 {c:06d}"),
    ("jpy", "JP", "ja-JP", 10, lambda c: f"+81 90 {1000 + c // 10_000:04d} {c % 10_000:04d}"),
    ("eur", "FR", "fr-FR", 7, lambda c: "06 " + " ".join(f"{c // 100**k % 100:02d}" for k in (3, 2, 1, 0))),
    ("bhd", "BH", "ar-BH", 3, lambda c: f"+973 36{c:06d}"),
]
FAILURES = [
    ("card_declined", "Your card was declined."),
    ("insufficient_funds", "Your card has insufficient funds."),
    ("expired_card", "Your card has expired."),
    ("authentication_required", "Your card requires authentication."),
]


def make_csv(rows: int) -> bytes:
    """A realistic export of failed payments; the same bytes for the same `rows`."""
    rng = random.Random(7)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    customers = max(1, rows // 2)
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    weights = [m[3] for m in MARKETS]
    for i in range(rows):
        customer = rng.randrange(customers)
        # A customer keeps their market, so a repeated customer repeats exactly.
        currency, country, locale, _, phone_of = random.Random(customer).choices(MARKETS, weights)[0]
        phone = phone_of(customer)
        code, message = FAILURES[i % len(FAILURES)]
        ref = f"IMP-{i:07d}"
        if i % 200 == 199:  # 0.5%: a reference repeated from earlier in the file
            ref = f"IMP-{i - 100:07d}"
        email = f"customer{customer:06d}@shop{customer % 50}.example.com"
        # Written as people write them: 80% from a whole amount in the smallest unit.
        amount = (
            format_major(rng.randrange(500, 50_000), currency)
            if rng.random() < 0.8
            else f"{rng.randrange(5, 500)}.{rng.randrange(100):02d}"
        )
        if currency == "jpy" and "." in amount:
            amount = amount.split(".")[0]
        if currency == "bhd" and len(amount.partition(".")[2]) == 2:
            amount += "0"
        if i % 100 == 57:  # 1% with a bad value, each in its own way
            kind = (i // 100) % 4
            if kind == 0:
                email = "not-an-email"
            elif kind == 1:
                currency = "xyz"
            elif kind == 2:
                phone = "12"
            else:
                amount = "-5"
        failed_at = (now - timedelta(seconds=rng.randrange(0, 90 * 86400))).strftime("%Y-%m-%dT%H:%M:%SZ")
        metadata = json.dumps({"order_id": f"ORD-{i:07d}"}) if i % 5 == 0 else ""
        writer.writerow(
            [
                ref,
                amount,
                currency,
                f"Customer {customer}",
                email,
                phone,
                country,
                locale,
                code,
                message,
                failed_at,
                metadata,
            ]
        )
    return out.getvalue().encode()


def csv_file(rows: int) -> Path:
    path = common.OUT / f"import-{rows}.csv"
    if not path.exists():
        common.OUT.mkdir(exist_ok=True)
        path.write_bytes(make_csv(rows))
    return path


def prepare_import(app: Any, data: bytes) -> int:
    """Empty the import organization and store the file as a queued import (the columns are
    our template's, mapped as proposed); return its id."""
    from recovery.audit import Actor
    from recovery.extensions import db
    from recovery.imports.services import create_import

    organization_id = common.ensure_org_and_user(app, IMPORT_SLUG, "Bench Imports", IMPORT_EMAIL)
    with common.raw_connection() as conn:
        conn.execute("DELETE FROM transaction WHERE organization_id = %s", (organization_id,))
        conn.execute("DELETE FROM audit_event WHERE organization_id = %s", (organization_id,))
        conn.execute("DELETE FROM csv_import WHERE organization_id = %s", (organization_id,))
        conn.commit()
    with common.raw_connection(autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) transaction")
    with app.app_context():
        actor = Actor.system(organization_id, "bench")
        csv_import = create_import(
            db.session, actor, "bench.csv", data, app.config["CSV_MAX_BYTES"], mapping={}
        )
        db.session.commit()
        return csv_import.id


def run_worker(app: Any, import_id: int, log_path: Path, nice: int) -> dict[str, Any]:
    """Enqueue the job and run one burst worker; return the job's timings and counters."""
    from recovery.imports.jobs import import_csv

    job_timeout = common.first_of(
        "recovery.imports.starting:JOB_TIMEOUT", "recovery.imports.views:JOB_TIMEOUT"
    )
    from recovery.queue import get_queue

    with app.app_context():
        queue = get_queue()
        queue.empty()  # type: ignore[no-untyped-call]
        queue.enqueue(import_csv, import_id, job_timeout=job_timeout, description=f"bench import {import_id}")
    command = [
        str(Path(sys.executable).parent / "flask"),
        "--app",
        "wsgi",
        "worker",
        "--burst",
        "--without-scheduler",
    ]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    with log_path.open("wb") as log:
        subprocess.run(
            command,
            cwd=common.APP_ROOT,
            env={**os.environ, **common.app_config()},
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=True,
        )
    events = {}
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") in ("csv_import_started", "csv_import_finished", "csv_import_failed"):
                events[record["event"]] = record
    if "csv_import_finished" not in events:
        sys.exit(f"The import did not finish; see {log_path}")
    started = datetime.fromisoformat(events["csv_import_started"]["timestamp"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(events["csv_import_finished"]["timestamp"].replace("Z", "+00:00"))
    return {
        "started": started.timestamp(),
        "finished": finished.timestamp(),
        "seconds": (finished - started).total_seconds(),
        **{k: events["csv_import_finished"].get(k) for k in ("imported", "duplicates", "invalid")},
    }


def load_until(
    stop: threading.Event, holder: dict[str, Any], page: str, cookies: list[str], rate: float
) -> None:
    """The light list load, until `stop` is set (at most 10 minutes); its result in holder["during"]."""
    holder["during"] = common.run_load(
        "during", page, cookies, seconds=600, max_requests=50_000, rate=rate, stop=stop
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=20, help="light list load, requests/s in all")
    parser.add_argument("--seconds", type=float, default=15, help="baseline duration")
    parser.add_argument("--repeat", type=int, default=3, help="imports to run; latencies are pooled")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the worker under `nice -n N` (default 0: as the Procfile does)",
    )
    args = parser.parse_args()

    path = csv_file(args.rows)
    data = path.read_bytes()
    print(f"{path.relative_to(common.ROOT)}: {args.rows:,} rows, {len(data) / 1_048_576:.1f} MiB")
    app = common.make_app()
    common.ensure_schema(app)
    list_org = common.ensure_org_and_user(app)
    with common.raw_connection() as conn:
        listed = conn.execute(
            "SELECT count(*) FROM transaction WHERE organization_id = %s", (list_org,)
        ).fetchone()[0]
    if listed < 20_000:
        sys.exit("Load the list's rows first: .venv/bin/python -m bench.seed_transactions")
    busy_before = common.idle_check()

    jobs: list[dict[str, Any]] = []
    baselines: list[common.LoadResult] = []
    durings: list[common.LoadResult] = []
    with common.gunicorn():
        cookies = [common.sign_in() for _ in range(args.clients)]
        page = "/transactions"
        common.run_load("warmup", page, cookies, seconds=3, max_requests=5_000)
        print(common.HEADER)
        for attempt in range(1, args.repeat + 1):
            import_id = prepare_import(app, data)
            baseline = common.run_load(
                "baseline", page, cookies, seconds=args.seconds, max_requests=50_000, rate=args.rate
            )
            # The load runs from before the job starts until after it ends; only
            # the requests sent while the job ran count.
            holder: dict[str, common.LoadResult] = {}
            stop = threading.Event()
            loader = threading.Thread(target=load_until, args=(stop, holder, page, cookies, args.rate))
            loader.start()
            time.sleep(2)
            try:
                job = run_worker(app, import_id, common.OUT / "import_worker.log", args.nice)
            finally:
                time.sleep(1)
                stop.set()
                loader.join(timeout=700)
            during = holder["during"].window(job["started"], job["finished"])
            print(baseline.row())
            print(during.row())
            print(
                f"run {attempt}: {args.rows:,} rows in {job['seconds']:.2f} s = "
                f"{args.rows / job['seconds']:,.0f} rows/s (imported {job['imported']:,}, "
                f"duplicates {job['duplicates']:,}, invalid {job['invalid']:,})",
                flush=True,
            )
            jobs.append(job)
            baselines.append(baseline)
            durings.append(during)
    baseline = common.LoadResult.pooled("baseline", baselines)
    during = common.LoadResult.pooled("during", durings)
    seconds = sorted(job["seconds"] for job in jobs)
    rows_per_s = args.rows / seconds[len(seconds) // 2]
    print(f"import: median {rows_per_s:,.0f} rows/s over {len(jobs)} run(s)")
    print("pooled:")
    print(baseline.row())
    print(during.row())
    rise = 100 * (during.p99_ms / baseline.p99_ms - 1)
    print(
        f"list p99 without import {baseline.p99_ms:.2f} ms, "
        f"during import {during.p99_ms:.2f} ms ({rise:+.0f}%)"
    )
    out = common.write_json(
        "import_csv",
        {
            "rows": args.rows,
            "bytes": len(data),
            "jobs": jobs,
            "rows_per_s_median": rows_per_s,
            "baseline": baseline.summary(),
            "during": during.summary(),
            "p99_rise_pct": rise,
            "machine_busy_before_pct": busy_before,
        },
    )
    print(f"written {out.relative_to(common.ROOT)}")


if __name__ == "__main__":
    main()
