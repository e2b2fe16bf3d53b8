"""Benchmark: 10,000 due emails through RQ workers to a loopback SMTP server, and the due scan at 1M attempts.

.venv/bin/python -m bench.send_messages  # --messages 10000 --workers 2 --batch 50 --scan-rows 1000000

1. Batched: 10,000 attempts of the `bench-send` organization, first email due
   now, each scheduled the way `start_recovery`'s caller does it
   (recovery.recoveries.jobs.schedule_send: one send job each). Then N
   `flask --app wsgi worker --burst` processes (SimpleWorker, the default)
   deliver them to an aiosmtpd server in this process, which counts emails and
   connections. SEND_BATCH_SIZE attempts per job, one SMTP connection per batch.
2. One connection per email: the same with MAIL_MESSAGES_PER_CONNECTION=1 (the
   product's own setting; batching unchanged), for the reuse ratio.
3. Unbatched: SEND_BATCH_SIZE=1 and MAIL_MESSAGES_PER_CONNECTION=1, a job and
   a connection per email (how sending worked before batching), for reference.
4. The due scan: `bench-due` gets 1,000,000 attempts (5% due, 15% scheduled
   later, 80% finished), VACUUM ANALYZE, then `due_attempts()`'s own SQL runs
   200 times through psycopg (p50/p99, client side) and once under
   EXPLAIN (ANALYZE, BUFFERS).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from redis import Redis

from bench.common import (
    DATABASE_URL,
    OUT,
    REDIS_URL,
    ROOT,
    app_config,
    ensure_database,
    ensure_org_and_user,
    ensure_schema,
    idle_check,
    make_app,
    percentile,
    raw_connection,
    write_json,
)
from recovery.sandbox.harness import free_port

SEND_ORG = ("bench-send", "Bench Sends", "owner@bench-send.example")
DUE_ORG = ("bench-due", "Bench Due Scan", "owner@bench-due.example")
SCAN_RUNS = 200
ATTEMPT_COLUMNS = (
    "organization_id, transaction_id, channel, token, status, expires_at, max_retries, messages_sent,"
    " next_send_at, created_at, updated_at, schedule, step, allow_fallback"
)


class Counter:
    """aiosmtpd handler that counts what arrives: connections (EHLO/HELO) and emails (DATA)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.emails = 0
        self.first: float | None = None
        self.last: float | None = None

    def reset(self) -> None:
        with self.lock:
            self.connections = self.emails = 0
            self.first = self.last = None

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: Any
    ) -> Any:
        session.host_name = hostname
        with self.lock:
            self.connections += 1
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        session.host_name = hostname
        with self.lock:
            self.connections += 1
        return f"250 {server.hostname}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.perf_counter()
        with self.lock:
            self.emails += 1
            self.first = self.first or now
            self.last = now
        return "250 Message accepted for delivery"


# --- data ----------------------------------------------------------------------


def reset_org(org_id: int) -> None:
    with raw_connection() as conn:
        for table in ("message", "recovery_attempt", "audit_event", "transaction"):
            conn.execute(f"DELETE FROM {table} WHERE organization_id = %s", (org_id,))  # type: ignore[arg-type]
        conn.commit()


def load_due_sends(org_id: int, count: int) -> list[tuple[int, datetime]]:
    """`count` recovering transactions, each with an attempt whose first email is due now.

    INSERT ... SELECT from generate_series: the rows are made by the server, nothing crosses the wire.
    """
    reset_org(org_id)
    with raw_connection() as conn:
        conn.execute(
            "INSERT INTO transaction (organization_id, transaction_ref, amount, currency, status,"
            " failure_code, customer_name, customer_email, customer_locale, metadata, source, failed_at,"
            " created_at, updated_at)"
            " SELECT %(org)s, 'SEND-' || lpad(g::text, 6, '0'), 1000 + g %% 9000, 'usd', 'recovering',"
            " 'card_declined', 'Customer ' || g, 'customer' || g || '@example.com', 'en-US', '{}', 'api',"
            " now() - interval '1 hour', now(), now() FROM generate_series(1, %(n)s) g",
            {"org": org_id, "n": count},
        )
        rows = conn.execute(
            f"INSERT INTO recovery_attempt ({ATTEMPT_COLUMNS})"
            " SELECT organization_id, id, 'email', md5('send' || id || clock_timestamp()::text) || 'x',"
            " 'scheduled', now() + interval '7 days', 3, 0, now() - interval '1 second', now(), now(),"
            " '0,1,3,6', 0, true FROM transaction WHERE organization_id = %s"
            " RETURNING id, next_send_at",
            (org_id,),
        ).fetchall()
        conn.commit()
        conn.execute("ANALYZE transaction")
        conn.execute("ANALYZE recovery_attempt")
    return [(int(r[0]), r[1]) for r in rows]


def load_scan_rows(org_id: int, rows: int) -> None:
    """1,000,000 attempts for the due scan: 5% due, 15% scheduled later, 80% finished. Once."""
    with raw_connection() as conn:
        have = conn.execute("SELECT count(*) FROM recovery_attempt WHERE organization_id = %s", (org_id,))
        if have.fetchone()[0] == rows:  # type: ignore[index]
            return
    reset_org(org_id)
    active = rows // 5  # the due and the later ones: one active attempt per transaction
    began = time.perf_counter()
    with raw_connection() as conn:
        conn.execute(
            "INSERT INTO transaction (organization_id, transaction_ref, amount, currency, status,"
            " customer_email, metadata, source, failed_at, created_at, updated_at)"
            " SELECT %(org)s, 'DUE-' || lpad(g::text, 7, '0'), 5000, 'usd', 'recovering',"
            " 'due' || g || '@example.com', '{}', 'api', now(), now(), now()"
            " FROM generate_series(1, %(n)s) g",
            {"org": org_id, "n": active},
        )
        first = conn.execute(
            "SELECT min(id) FROM transaction WHERE organization_id = %s", (org_id,)
        ).fetchone()[0]  # type: ignore[index]
        # g = 1..rows; g <= active: active (the first 5% of rows due, the rest later), else finished.
        conn.execute(
            f"INSERT INTO recovery_attempt ({ATTEMPT_COLUMNS})"
            " SELECT %(org)s, %(first)s + (g - 1) %% %(active)s, 'email', 'due-' || g,"
            " CASE WHEN g > %(active)s"
            "      THEN (ARRAY['completed', 'expired', 'exhausted', 'cancelled'])[1 + g %% 4]"
            "      WHEN g %% 4 = 0 THEN 'notified' ELSE 'scheduled' END,"
            " now() + interval '7 days', 3, 0,"
            " CASE WHEN g > %(active)s THEN NULL"
            "      WHEN g <= %(due)s THEN now() - (g %% 86400) * interval '1 second'"
            "      ELSE now() + (g %% 518400) * interval '1 second' END,"
            " now() - interval '1 day', now(), '0,1,3,6', 0, true FROM generate_series(1, %(n)s) g",
            {"org": org_id, "first": first, "active": active, "due": rows // 20, "n": rows},
        )
        conn.commit()
    with raw_connection(autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE transaction")
        conn.execute("VACUUM ANALYZE recovery_attempt")
    print(f"loaded {rows:,} attempts for the due scan in {time.perf_counter() - began:.0f} s")


# --- runs ----------------------------------------------------------------------


def park_scan_rows(org_id: int, parked: bool) -> None:
    """Move the due scan's due attempts a century ahead (or back), so that no send run picks them up."""
    shift, where = (
        ("+", "next_send_at <= now()") if parked else ("-", "next_send_at > now() + interval '50 years'")
    )
    with raw_connection() as conn:
        conn.execute(
            f"UPDATE recovery_attempt SET next_send_at = next_send_at {shift} interval '100 years'"  # type: ignore[arg-type]
            f" WHERE organization_id = %s AND {where}",
            (org_id,),
        )
        conn.commit()
    if not parked:
        with raw_connection(autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE recovery_attempt")


def other_due() -> int:
    with raw_connection() as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM recovery_attempt WHERE status IN ('scheduled', 'notified', 'clicked')"
                " AND next_send_at <= now()"
            ).fetchone()[0]  # type: ignore[index]
        )


def schedule_all(app: Any, sends: list[tuple[int, datetime]]) -> float:
    """Enqueue one send job per attempt, as the code that starts recoveries does; seconds taken."""
    from recovery.recoveries import jobs

    began = time.perf_counter()
    with app.app_context():
        now = datetime.now(UTC)
        for attempt_id, due in sends:
            jobs.schedule_send(attempt_id, 0, due, now)
    return time.perf_counter() - began


def deliver(
    name: str,
    app: Any,
    org_id: int,
    counter: Counter,
    port: int,
    args: argparse.Namespace,
    env: dict[str, str],
) -> dict[str, Any]:
    """Load the due sends, enqueue them, run the workers until the queue is empty; the figures."""
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    sends = load_due_sends(org_id, args.messages)
    enqueue_s = schedule_all(app, sends)
    counter.reset()
    worker_env = {
        **os.environ,
        **app_config(),
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(port),
        "MAIL_DEFAULT_SENDER": "Bench Sends <payments@bench.example>",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    flask = str(Path(sys.executable).parent / "flask")
    logs = [(OUT / f"send-worker-{name}-{i}.log").open("wb") for i in range(args.workers)]
    began = time.perf_counter()
    cpu_before = os.times()
    processes = [
        subprocess.Popen(
            [flask, "--app", "wsgi", "worker", "--burst", "--without-scheduler"],
            cwd=ROOT,
            env=worker_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    for process in processes:
        process.wait(timeout=3600)
    wall = time.perf_counter() - began
    cpu_after = os.times()
    for log in logs:
        log.close()
    with raw_connection() as conn:
        sent = conn.execute(
            "SELECT count(*) FROM message WHERE organization_id = %s AND status = 'sent'", (org_id,)
        ).fetchone()[0]  # type: ignore[index]
    span = (counter.last or 0) - (counter.first or 0)
    return {
        "name": name,
        "settings": env,
        "workers": args.workers,
        "enqueued": len(sends),
        "enqueue_s": round(enqueue_s, 2),
        "received": counter.emails,
        "sent_rows": sent,
        "connections": counter.connections,
        "emails_per_connection": round(counter.emails / counter.connections, 1)
        if counter.connections
        else None,
        "wall_s": round(wall, 2),
        # First to last email received: the workers' start-up (~1 s of imports) is not sending.
        "delivery_s": round(span, 2),
        "emails_per_s": round((counter.emails - 1) / span, 1) if span > 0 else None,
        "emails_per_s_wall": round(counter.emails / wall, 1),
        "workers_cpu_s": round(
            (cpu_after.children_user + cpu_after.children_system)
            - (cpu_before.children_user + cpu_before.children_system),
            1,
        ),
    }


def due_scan(app: Any) -> dict[str, Any]:
    """Time due_attempts()'s SQL as the sweeper runs it: client-side p50/p99 and the plan."""
    from sqlalchemy.dialects import postgresql

    from recovery.extensions import db
    from recovery.recoveries import services

    captured: list[Any] = []
    with app.app_context():

        class Capture:
            def execute(self, statement: Any) -> list[Any]:
                captured.append(statement)
                return []

        services.due_attempts(Capture(), datetime.now(UTC))  # type: ignore[arg-type]
        db.session.remove()
    compiled = captured[0].compile(dialect=postgresql.psycopg.dialect())  # type: ignore[attr-defined]
    sql = str(compiled)
    params = dict(compiled.params)
    with raw_connection() as conn:
        for _ in range(20):  # warm the cache
            conn.execute(sql, params).fetchall()
        timings = []
        returned = 0
        for _ in range(SCAN_RUNS):
            params = {**params, next(k for k in params if k.startswith("next_send_at")): datetime.now(UTC)}
            began = time.perf_counter()
            returned = len(conn.execute(sql, params).fetchall())
            timings.append((time.perf_counter() - began) * 1000)
        plan = [row[0] for row in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()]
        counts = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status IN ('scheduled', 'notified', 'clicked')"
            " AND next_send_at <= now()) FROM recovery_attempt"
        ).fetchone()
        conn.rollback()
    timings.sort()
    return {
        "attempts": counts[0],  # type: ignore[index]
        "due": counts[1],  # type: ignore[index]
        "rows_returned": returned,
        "runs": SCAN_RUNS,
        "p50_ms": round(percentile(timings, 50), 3),
        "p99_ms": round(percentile(timings, 99), 3),
        "max_ms": round(timings[-1], 3),
        "sql": sql,
        "plan": plan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=50, help="SEND_BATCH_SIZE of the batched runs")
    parser.add_argument("--scan-rows", type=int, default=1_000_000)
    parser.add_argument("--skip-unbatched", action="store_true", help="leave out run 3 (a job per email)")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    ensure_database()
    app = make_app()
    ensure_schema(app)
    send_org = ensure_org_and_user(app, *SEND_ORG)
    due_org = ensure_org_and_user(app, *DUE_ORG)
    park_scan_rows(due_org, parked=True)  # left by an earlier run: no send run may take them
    reset_org(send_org)
    if other_due():
        sys.exit(f"{other_due()} other attempts are due in {DATABASE_URL}: the workers would send them too.")

    counter = Counter()
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP command at INFO
    port = free_port()
    controller = Controller(counter, hostname="127.0.0.1", port=port, server_hostname="bench.smtp")
    controller.start()
    idle = idle_check()
    runs = [
        ("batched", {"SEND_BATCH_SIZE": str(args.batch), "MAIL_MESSAGES_PER_CONNECTION": "100"}),
        ("conn-per-email", {"SEND_BATCH_SIZE": str(args.batch), "MAIL_MESSAGES_PER_CONNECTION": "1"}),
    ]
    if not args.skip_unbatched:
        runs.append(("unbatched", {"SEND_BATCH_SIZE": "1", "MAIL_MESSAGES_PER_CONNECTION": "1"}))
    results = []
    try:
        for name, env in runs:
            results.append(deliver(name, app, send_org, counter, port, args, env))
            print(f"{name}: {results[-1]}")
    finally:
        controller.stop()
    load_scan_rows(due_org, args.scan_rows)
    park_scan_rows(due_org, parked=False)
    scan = due_scan(app)
    park_scan_rows(due_org, parked=True)

    by_name = {r["name"]: r for r in results}
    ratio = None
    if by_name["conn-per-email"]["emails_per_s"]:
        ratio = round(by_name["batched"]["emails_per_s"] / by_name["conn-per-email"]["emails_per_s"], 2)
    print()
    print(f"machine busy before the runs: {idle:.0f}% (2 cores, shared)")
    print(
        f"{'run':<16} {'batch':>5} {'per conn':>8} {'emails':>7} {'conns':>6} {'e/conn':>7}"
        f" {'emails/s':>9} {'wall/s':>7} {'wall s':>7} {'cpu s':>6}"
    )
    for r in results:
        batch, per_connection = (
            r["settings"]["SEND_BATCH_SIZE"],
            r["settings"]["MAIL_MESSAGES_PER_CONNECTION"],
        )
        print(
            f"{r['name']:<16} {batch:>5} {per_connection:>8} {r['received']:>7} {r['connections']:>6}"
            f" {r['emails_per_connection'] or 0:>7} {r['emails_per_s'] or 0:>9} {r['emails_per_s_wall']:>7}"
            f" {r['wall_s']:>7} {r['workers_cpu_s']:>6}"
        )
    print(f"reused connection / connection per email, emails/s: {ratio}")
    if "unbatched" in by_name and by_name["unbatched"]["emails_per_s"]:
        print(
            "batched / unbatched (a job and a connection per email), emails/s:"
            f" {round(by_name['batched']['emails_per_s'] / by_name['unbatched']['emails_per_s'], 2)}"
        )
    print(
        f"due scan over {scan['attempts']:,} attempts ({scan['due']:,} due), {scan['rows_returned']} rows:"
        f" p50 {scan['p50_ms']} ms, p99 {scan['p99_ms']} ms, max {scan['max_ms']} ms ({SCAN_RUNS} runs)"
    )
    print("\n".join("  " + line for line in scan["plan"]))
    path = write_json(
        "send_messages",
        {"idle_busy_pct": round(idle), "runs": results, "reuse_ratio": ratio, "due_scan": scan},
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
