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
   Runs 1 and 2 are made twice: over plain SMTP, and as a real relay is
   reached (STARTTLS required, the certificate verified through
   MAIL_SSL_CA_FILE, then AUTH LOGIN); `--transport` picks one or both.
4. The due scan: `bench-due` gets 1,000,000 attempts (5% due, 15% scheduled
   later, 80% finished), VACUUM ANALYZE, then `due_attempts()`'s own SQL runs
   200 times through psycopg (p50/p99, client side) and once under
   EXPLAIN (ANALYZE, BUFFERS).
5. The floor (`plain-smtplib`): the emails the plain `batched` run delivered,
   byte for byte, sent again by smtplib from this process over one connection
   to the same server; printed beside `batched` with the ratio.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from redis import Redis

from bench.common import (
    APP_ROOT,
    DATABASE_URL,
    OUT,
    REDIS_URL,
    app_config,
    ensure_database,
    ensure_org_and_user,
    ensure_schema,
    first_of,
    idle_check,
    make_app,
    percentile,
    raw_connection,
    write_json,
)
from stripe_sandbox.harness import free_port

MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)
SEND_ORG = ("bench-send", "Bench Sends", "owner@bench-send.example")
DUE_ORG = ("bench-due", "Bench Due Scan", "owner@bench-due.example")
SCAN_RUNS = 200
ATTEMPT_COLUMNS = (
    "organization_id, transaction_id, channel, token, status, expires_at, max_retries, messages_sent,"
    " next_send_at, created_at, updated_at, schedule, step, allow_fallback"
)


class Counter:
    """aiosmtpd handler that counts what arrives: connections (EHLO/HELO), emails (DATA), duplicates."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.emails = 0
        self.first: float | None = None
        self.last: float | None = None
        self.message_ids: set[bytes] = set()
        self.duplicates = 0
        # (sender, recipients, bytes) of every email, when `keep` is set: what the floor sends again
        self.keep = False
        self.kept: list[tuple[str, list[str], bytes]] = []

    def reset(self, keep: bool = False) -> None:
        with self.lock:
            self.connections = self.emails = self.duplicates = 0
            self.first = self.last = None
            self.message_ids = set()
            self.keep, self.kept = keep, []

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: Any
    ) -> Any:
        session.host_name = hostname
        self._count_connection(session)
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        session.host_name = hostname
        self._count_connection(session)
        return f"250 {server.hostname}"

    def _count_connection(self, session: Any) -> None:
        # After STARTTLS the client greets again, on a new aiosmtpd session with `ssl` set:
        # only the greeting before it starts a connection.
        if session.ssl is None:
            with self.lock:
                self.connections += 1

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == RELAY_PASSWORD.encode()
        return AuthResult(success=ok)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.perf_counter()
        found = MESSAGE_ID.search(envelope.original_content or envelope.content or b"")
        message_id = found.group(1) if found else b""
        with self.lock:
            if message_id in self.message_ids:
                self.duplicates += 1  # the same email twice: a send-once bug
            self.message_ids.add(message_id)
            if self.keep:
                self.kept.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            self.emails += 1
            self.first = self.first or now
            self.last = now
        return "250 Message accepted for delivery"


RELAY_USER, RELAY_PASSWORD = "bench", "bench-relay-password"


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (P-256), made with the openssl CLI; (cert, key)."""
    cert, key = directory / "smtp.pem", directory / "smtp.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "1",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=bench.smtp", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def smtp_server(counter: Counter, port: int, transport: str, certificate: tuple[Path, Path]) -> Controller:
    """aiosmtpd on loopback: plain, or requiring STARTTLS and a login as a real relay does."""
    if transport == "plain":
        return Controller(counter, hostname="127.0.0.1", port=port, server_hostname="bench.smtp")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return Controller(
        counter,
        hostname="127.0.0.1",
        port=port,
        server_hostname="bench.smtp",
        tls_context=context,
        require_starttls=True,
        authenticator=counter.authenticate,
        auth_require_tls=True,
        auth_required=True,
    )


def transport_settings(transport: str, certificate: tuple[Path, Path]) -> dict[str, str]:
    if transport == "plain":
        return {}
    return {
        "MAIL_USE_TLS": "true",
        "MAIL_SSL_CA_FILE": str(certificate[0]),
        "MAIL_USERNAME": RELAY_USER,
        "MAIL_PASSWORD": RELAY_PASSWORD,
    }


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
        # Any hour: the default quiet hours (night in the customer's zone) would move every send to morning.
        conn.execute("UPDATE organization SET quiet_hours = '' WHERE id = %s", (org_id,))
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
    """Move the due scan's attempts due within a day a century ahead (or back): no send run picks them up.

    A day, not now: the "later" ones of a small scan set fall due minutes after it is loaded.
    """
    shift, where = (
        ("+", "next_send_at <= now() + interval '1 day'")
        if parked
        else ("-", "next_send_at > now() + interval '50 years'")
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
    schedule_send = first_of(
        "recovery.recoveries.scheduling:schedule_send", "recovery.recoveries.jobs:schedule_send"
    )
    began = time.perf_counter()
    with app.app_context():
        now = datetime.now(UTC)
        for attempt_id, due in sends:
            schedule_send(attempt_id, 0, due, now)
    return time.perf_counter() - began


def deliver(
    name: str,
    app: Any,
    org_id: int,
    counter: Counter,
    port: int,
    args: argparse.Namespace,
    env: dict[str, str],
    keep: bool = False,
) -> dict[str, Any]:
    """Load the due sends, enqueue them, run the workers until the queue is empty; the figures.

    With `keep`, the counter keeps every email received (for the smtplib floor).
    """
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    sends = load_due_sends(org_id, args.messages)
    enqueue_s = schedule_all(app, sends)
    counter.reset(keep=keep)
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
            cwd=APP_ROOT,
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
        "duplicates": counter.duplicates,
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


def plain_smtplib(counter: Counter, port: int, emails: list[tuple[str, list[str], bytes]]) -> dict[str, Any]:
    """The floor: the same emails, byte for byte, from smtplib over one connection; counted alike.

    The sender is a process of its own, as the workers are: in this one it would
    share the GIL with the SMTP server.
    """
    path = OUT / "send-floor.pickle"
    path.write_bytes(pickle.dumps(emails))
    counter.reset()
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bench.send_messages", "--smtplib", str(path), str(port)], check=True
    )
    wall = time.perf_counter() - began
    span = (counter.last or 0) - (counter.first or 0)
    return {
        "name": "plain-smtplib",
        "settings": {"SEND_BATCH_SIZE": "-", "MAIL_MESSAGES_PER_CONNECTION": str(len(emails))},
        "workers": 1,
        "received": counter.emails,
        "duplicates": counter.duplicates,
        "connections": counter.connections,
        "emails_per_connection": float(counter.emails),
        "wall_s": round(wall, 2),
        "delivery_s": round(span, 2),
        "emails_per_s": round((counter.emails - 1) / span, 1) if span > 0 else None,
        "emails_per_s_wall": round(counter.emails / wall, 1),
        "workers_cpu_s": 0.0,
        "bytes_per_email": round(sum(len(content) for _, _, content in emails) / max(1, len(emails))),
    }


def due_scan(app: Any) -> dict[str, Any]:
    """Time due_attempts()'s SQL as the sweeper runs it: client-side p50/p99 and the plan."""
    from sqlalchemy.dialects import postgresql

    from recovery.extensions import db

    captured: list[Any] = []
    with app.app_context():

        class Capture:
            def execute(self, statement: Any) -> list[Any]:
                captured.append(statement)
                return []

        due_attempts = first_of(
            "recovery.recoveries.claims:due_attempts", "recovery.recoveries.services:due_attempts"
        )
        due_attempts(Capture(), datetime.now(UTC))
        db.session.remove()
    compiled = captured[0].compile(dialect=postgresql.psycopg.dialect())  # type: ignore[attr-defined, no-untyped-call]
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


def send_with_smtplib(path: Path, port: int) -> None:
    """The floor's sender: every email in the file over one connection."""
    emails: list[tuple[str, list[str], bytes]] = pickle.loads(path.read_bytes())
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for sender, recipients, content in emails:
            smtp.sendmail(sender, recipients, content)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--smtplib":
        send_with_smtplib(Path(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=50, help="SEND_BATCH_SIZE of the batched runs")
    parser.add_argument("--scan-rows", type=int, default=1_000_000)
    parser.add_argument("--skip-unbatched", action="store_true", help="leave out run 3 (a job per email)")
    parser.add_argument(
        "--transport", choices=["plain", "tls", "both"], default="both", help="SMTP as runs 1 and 2 use it"
    )
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
    certificate = self_signed_certificate(Path(tempfile.mkdtemp(prefix="bench-smtp-")))
    transports = ["plain", "tls"] if args.transport == "both" else [args.transport]
    idle = idle_check()
    results = []
    for transport in transports:
        suffix = "" if transport == "plain" else "-tls"
        batch = {"SEND_BATCH_SIZE": str(args.batch)}
        runs = [
            ("batched" + suffix, {**batch, "MAIL_MESSAGES_PER_CONNECTION": "100"}),
            ("conn-per-email" + suffix, {**batch, "MAIL_MESSAGES_PER_CONNECTION": "1"}),
        ]
        if transport == "plain" and not args.skip_unbatched:
            runs.append(("unbatched", {"SEND_BATCH_SIZE": "1", "MAIL_MESSAGES_PER_CONNECTION": "1"}))
        port = free_port()
        controller = smtp_server(counter, port, transport, certificate)
        controller.start()
        try:
            for name, env in runs:
                env = {**env, **transport_settings(transport, certificate)}
                keep = name == "batched"
                results.append(deliver(name, app, send_org, counter, port, args, env, keep=keep))
                print(f"{name}: {results[-1]}")
                if keep:
                    results.append(plain_smtplib(counter, port, counter.kept))
                    print(f"plain-smtplib: {results[-1]}")
        finally:
            controller.stop()
    load_scan_rows(due_org, args.scan_rows)
    park_scan_rows(due_org, parked=False)
    scan = due_scan(app)
    park_scan_rows(due_org, parked=True)

    by_name = {r["name"]: r for r in results}
    ratios = {}
    for suffix in ("", "-tls"):
        reused, fresh = by_name.get("batched" + suffix), by_name.get("conn-per-email" + suffix)
        if reused and fresh and reused["emails_per_s"] and fresh["emails_per_s"]:
            ratios[suffix or "-plain"] = round(reused["emails_per_s"] / fresh["emails_per_s"], 2)
    print()
    print(f"machine busy before the runs: {idle:.0f}% (2 cores, shared)")
    print(
        f"{'run':<20} {'batch':>5} {'per conn':>8} {'emails':>7} {'conns':>6} {'e/conn':>7}"
        f" {'emails/s':>9} {'wall/s':>7} {'wall s':>7} {'cpu s':>6}"
    )
    for r in results:
        batch, per_connection = (
            r["settings"]["SEND_BATCH_SIZE"],
            r["settings"]["MAIL_MESSAGES_PER_CONNECTION"],
        )
        print(
            f"{r['name']:<20} {batch:>5} {per_connection:>8} {r['received']:>7} {r['connections']:>6}"
            f" {r['emails_per_connection'] or 0:>7} {r['emails_per_s'] or 0:>9} {r['emails_per_s_wall']:>7}"
            f" {r['wall_s']:>7} {r['workers_cpu_s']:>6}"
        )
    for transport, ratio in ratios.items():
        print(f"reused connection / connection per email, emails/s ({transport[1:]}): {ratio}")
    if by_name.get("plain-smtplib", {}).get("emails_per_s") and by_name["batched"]["emails_per_s"]:
        print(
            "batched / plain smtplib over one connection (the floor), emails/s:"
            f" {round(by_name['batched']['emails_per_s'] / by_name['plain-smtplib']['emails_per_s'], 2)}"
        )
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
        {"idle_busy_pct": round(idle), "runs": results, "reuse_ratios": ratios, "due_scan": scan},
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
