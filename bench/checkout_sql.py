"""The create's SQL alone, in process: no HTTP, no Flask, no ORM, no Stripe.

    .venv/bin/python -m bench.checkout_sql [--requests 1000]

Runs `bench.bare_checkout`'s crash-safe create (the floor of
`bench.checkout_create --floor`) directly on one psycopg connection, with a
timer around every statement, then a "minimal" create that gives up the
reservation (one commit, after Stripe, as if nothing could crash in between):
the four reads, then the Customer, the session row, the transaction, the
audit event and the durable commit. Prints p50 / p95 per statement and for
the whole create, and a plain round trip (`SELECT 1`) for scale. Whatever
the app does besides, over HTTP, comes on top of these.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psycopg

from bench import bare_checkout, checkout_create, common


class TimedConnection:
    """The psycopg calls `bare_checkout` makes, each timed under its statement's first words."""

    def __init__(self, conn: psycopg.Connection[Any], spent: defaultdict[str, list[float]]) -> None:
        self.conn, self.spent = conn, spent

    def _timed(self, label: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return call()
        finally:
            self.spent[label].append((time.perf_counter() - started) * 1000)

    def execute(self, sql: str, params: Any = None) -> Any:
        return self._timed(" ".join(sql.split()[:3]), lambda: self.conn.execute(sql, params))

    def commit(self) -> None:
        self._timed("COMMIT", self.conn.commit)

    def rollback(self) -> None:
        self.conn.rollback()


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    return " ".join(f"{common.percentile(ordered, q):8.3f}" for q in (50, 95, 99))


def measure(
    name: str,
    create: Callable[..., dict[str, Any]],
    conn: psycopg.Connection[Any],
    token: str,
    refs: list[str],
    warmup: int,
) -> None:
    spent: defaultdict[str, list[float]] = defaultdict(list)
    timed = TimedConnection(conn, spent)
    whole: list[float] = []
    for i, ref in enumerate(refs):
        if i == warmup:
            spent.clear()
            whole.clear()
        started = time.perf_counter()
        create(timed, token, {"transaction_ref": ref})
        whole.append((time.perf_counter() - started) * 1000)
    print(f"\n{name}: {len(whole)} creates{'':24}     p50      p95      p99  (ms)")
    for label, values in spent.items():
        print(f"  {label:<34} x{len(values) // len(whole)} {quantiles(values)}")
    print(f"  {'whole create':<37} {quantiles(whole)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    common.ensure_database()
    common.idle_check()
    per_run = args.warmup + args.requests
    token, refs = checkout_create.prepare(2 * per_run)
    conn = bare_checkout._connection()
    round_trips = []
    for _ in range(2000):
        started = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        round_trips.append((time.perf_counter() - started) * 1000)
    print(f"SELECT 1 round trip{'':21}{quantiles(round_trips)}")
    measure(
        "crash-safe (bench.bare_checkout)", bare_checkout._create, conn, token, refs[:per_run], args.warmup
    )
    measure("minimal, one commit", bare_checkout.minimal_create, conn, token, refs[per_run:], args.warmup)


if __name__ == "__main__":
    main()
