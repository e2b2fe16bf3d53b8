"""Measure the transactions list over HTTP: gunicorn with 2 sync workers, 8 signed-in clients.

    .venv/bin/python -m bench.seed_transactions      # once: a million rows
    .venv/bin/python -m bench.list_page [--seconds 20] [--rate 40 --rate 120] [--explain]

Four pages of the `bench` organization: the first page, a status tab
(`?status=recovering`), a search by exact email, and the page that starts
10,000 rows deep (its `after` cursor is built from the database, exactly as the
page before it would have linked to it). Each scenario runs in each mode:

- closed loop: each client sends its next request as soon as the answer
  arrives; the server is saturated, so latency includes queueing for one of
  the two workers and req/s is the throughput;
- paced (`--rate`, all clients together; 40 and 120 requests/s by default): a
  fixed schedule below saturation, latency measured from each request's
  scheduled time.

Then it reads VmRSS of both gunicorn workers, and measures the floor: the
first page's loads against `bench.hello` (hello-world Flask under the same
gunicorn command and settings), printed beside the app with the ratio. `--explain` prints PostgreSQL's
plan (EXPLAIN ANALYZE, BUFFERS) of every query the list runs for each page.
Results go to bench/out/list_page-*.json.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from bench import common


def scenarios(app: Any, organization_id: int) -> dict[str, str]:
    """Name → path of the four pages; the deep cursor comes from the database."""
    from recovery.models import Transaction
    from recovery.transactions.services import PAGE_SIZE, encode_cursor

    with common.raw_connection() as conn:
        failed_at, row_id = conn.execute(
            "SELECT failed_at, id FROM transaction WHERE organization_id = %s "
            "ORDER BY failed_at DESC, id DESC OFFSET %s LIMIT 1",
            (organization_id, 10_000 - 1),
        ).fetchone()
    cursor = encode_cursor(Transaction(id=row_id, failed_at=failed_at), "date")
    assert PAGE_SIZE == 50
    return {
        "first": "/transactions",
        "status": "/transactions?status=recovering",
        "email": "/transactions?" + urlencode({"q": common.SEARCH_EMAIL}),
        "deep-10k": "/transactions?" + urlencode({"after": cursor}),
    }


def check_pages(paths: dict[str, str], cookie: str) -> None:
    """Fail loudly if a page does not show what the scenario is about."""
    for name, path in paths.items():
        status, body = common.fetch(path, cookie)
        rows = body.count('<td data-label="Reference">')
        if status != 200:
            sys.exit(f"{name}: HTTP {status} for {path}")
        expected = {"email": 4}.get(name, 50)
        if rows != expected:
            sys.exit(f"{name}: {rows} rows on {path}, expected {expected}")
        if name == "status" and body.count("status-recovering") < 50:
            sys.exit(f"{name}: rows that are not recovering on {path}")
        if name == "email" and body.count(f'<span class="sub"><bdi>{common.SEARCH_EMAIL}</bdi></span>') != 4:
            sys.exit(f"{name}: the search did not find {common.SEARCH_EMAIL}")


def floor(
    cookies: list[str], modes: list[float | None], seconds: float, max_requests: int
) -> list[common.LoadResult]:
    """The first page's loads against hello-world Flask under the same gunicorn: the floor."""
    with common.gunicorn(log_name="gunicorn-hello.log", app="bench.hello:app", ready_path="/"):
        common.run_load("hello", "/transactions", cookies, seconds=3, max_requests=10_000)
        return [
            common.run_load(
                "hello", "/transactions", cookies, seconds=seconds, max_requests=max_requests, rate=rate
            )
            for rate in modes
        ]


def explain(app: Any, organization_id: int, paths: dict[str, str]) -> None:
    """Print the plan of each query the list page runs, with the page's own parameters."""
    from sqlalchemy import event
    from werkzeug.datastructures import MultiDict

    from recovery.extensions import db
    from recovery.transactions import services

    with app.app_context():
        engine = db.engine
        for name, path in paths.items():
            captured: list[tuple[str, Any]] = []

            def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
                captured.append((statement, parameters))  # noqa: B023 - used before the next loop

            args = MultiDict(parse_qsl(urlsplit(path).query))
            event.listen(engine, "before_cursor_execute", capture)
            try:
                services.list_transactions(db.session, organization_id, services.ListQuery.from_args(args))
            finally:
                event.remove(engine, "before_cursor_execute", capture)
            db.session.rollback()
            for statement, parameters in captured:
                print(f"\n=== {name}: {' '.join(statement.split())[:160]}...")
                with engine.connect() as conn:
                    plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
                    for (line,) in plan:
                        print("   ", line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20, help="per scenario and mode (default 20)")
    parser.add_argument("--max-requests", type=int, default=50_000, help="per scenario and mode")
    parser.add_argument(
        "--rate", type=float, action="append", help="paced mode, requests/s in all (repeatable; 0: none)"
    )
    parser.add_argument("--warmup", type=float, default=3, help="seconds per scenario before measuring")
    parser.add_argument("--explain", action="store_true", help="print the query plans and exit")
    args = parser.parse_args()

    app = common.make_app()
    organization_id = common.ensure_org_and_user(app)
    with common.raw_connection() as conn:
        count = conn.execute(
            "SELECT count(*) FROM transaction WHERE organization_id = %s", (organization_id,)
        ).fetchone()[0]
    if count < 20_000:
        sys.exit(f"Only {count:,} transactions; load them first: .venv/bin/python -m bench.seed_transactions")
    paths = scenarios(app, organization_id)
    if args.explain:
        explain(app, organization_id, paths)
        return

    print(f"{count:,} transactions; gunicorn wsgi:app -w {args.workers} on {common.HOST}:{common.PORT}")
    busy_before = common.idle_check()
    results: list[common.LoadResult] = []
    with common.gunicorn(workers=args.workers) as server:
        cookies = [common.sign_in() for _ in range(args.clients)]
        check_pages(paths, cookies[0])
        for name, path in paths.items():
            common.run_load(name, path, cookies, seconds=args.warmup, max_requests=10_000)
        print(common.HEADER)
        rates = args.rate if args.rate is not None else [40.0, 120.0]
        modes: list[float | None] = [None, *(rate for rate in rates if rate)]
        for rate in modes:
            for name, path in paths.items():
                result = common.run_load(
                    name, path, cookies, seconds=args.seconds, max_requests=args.max_requests, rate=rate
                )
                print(result.row(), flush=True)
                results.append(result)
        workers = common.child_pids(server.pid)
        rss = {pid: round(common.rss_mb(pid), 1) for pid in workers}
    hello = floor(cookies, modes, args.seconds, args.max_requests)
    for result in hello:
        print(result.row(), flush=True)
    results += hello
    print(f"worker RSS (VmRSS, MiB): {', '.join(f'{pid}: {mb}' for pid, mb in rss.items())}")
    for rate in modes:
        mode = f"{rate:.0f}/s" if rate else "closed"
        by_name = {r.name: r for r in results if r.mode == mode}
        ratio = by_name["deep-10k"].p50_ms / by_name["first"].p50_ms
        print(f"{mode}: deep-10k p50 / first p50 = {ratio:.2f}")
        print(
            f"{mode}: first p50 / hello-world p50 = {by_name['first'].p50_ms / by_name['hello'].p50_ms:.2f}"
        )
    written = common.write_json(
        "list_page",
        {
            "transactions": count,
            "clients": args.clients,
            "workers": args.workers,
            "seconds": args.seconds,
            "results": [r.summary() for r in results],
            "worker_rss_mib": rss,
            "machine_busy_before_pct": busy_before,
        },
    )
    print(f"written {written.relative_to(common.ROOT)}")


if __name__ == "__main__":
    main()
