"""Where each hot path's time goes: cProfile, SQL statements, commits and Redis round trips per operation.

    .venv/bin/python -m bench.profile_paths                 # every path
    .venv/bin/python -m bench.profile_paths --path list     # one (repeatable)
    BENCH_TREE=/tmp/old-main .venv/bin/python -m bench.profile_paths   # another checkout's app

In process, on the benchmark database (bench.seed_transactions first), the
operation each benchmark times: a Checkout Session create through Flask's test
client (the Stripe sandbox running), a signed webhook POST, the list's first
page signed in, a 20,000-row CSV import job, and send jobs of 50 emails to a
loopback SMTP server. For each: wall ms per operation; SQL statements,
transactions, commits (those that wrote: a WAL flush each, an fsync unless
synchronous_commit is off) and statements run in autocommit; Redis commands
sent (a pipeline is one); the share of wall time by package (cProfile's own
time of each function, summed by where it lives); the slowest functions by
cumulative time. The full profile is in bench/out/profile-<path>.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench import common

WRITES = re.compile(r"^\s*(INSERT|UPDATE|DELETE)\b|\bFOR (NO KEY )?UPDATE\b", re.IGNORECASE)


@dataclass
class Tally:
    statements: int = 0
    autocommit: int = 0
    begins: int = 0
    commits: int = 0
    durable: int = 0
    rollbacks: int = 0
    redis: int = 0
    sql_seconds: float = 0.0  # from sending each statement to its answer: a round trip plus the server's work
    kinds: Counter[str] = field(default_factory=Counter)


@contextmanager
def counting() -> Iterator[Tally]:
    """Count SQL statements, transactions and Redis commands while the block runs."""
    import redis.connection
    import sqlalchemy as sa
    from sqlalchemy import event

    tally = Tally()
    wrote: dict[int, bool] = {}
    started: dict[int, float] = {}

    def statement(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        tally.statements += 1
        tally.kinds[" ".join(sql.split()[:3])[:40]] += 1
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            tally.autocommit += 1
        elif WRITES.search(sql):
            wrote[id(conn)] = True
        started[id(cursor)] = time.perf_counter()

    def answered(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        tally.sql_seconds += time.perf_counter() - started.pop(id(cursor), time.perf_counter())

    def begin(conn: Any) -> None:
        tally.begins += 1

    def commit(conn: Any) -> None:
        tally.commits += 1
        tally.durable += wrote.pop(id(conn), False)

    def rollback(conn: Any) -> None:
        tally.rollbacks += 1
        wrote.pop(id(conn), None)

    listeners: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", statement),
        ("after_cursor_execute", answered),
        ("begin", begin),
        ("commit", commit),
        ("rollback", rollback),
    ]
    for name, fn in listeners:
        event.listen(sa.engine.Engine, name, fn)
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        tally.redis += 1
        send(self, command, check_health)  # type: ignore[no-untyped-call]

    redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield tally
    finally:
        redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        for name, fn in listeners:
            event.remove(sa.engine.Engine, name, fn)


AREAS = [
    ("recovery", "/recovery/"),
    ("sqlalchemy", "/sqlalchemy/"),
    ("psycopg: sending and waiting on PostgreSQL", "/psycopg"),
    ("jinja2 + markupsafe", "/jinja2/"),
    ("jinja2 + markupsafe", "/markupsafe/"),
    ("babel", "/babel/"),
    ("flask + werkzeug", "/flask"),
    ("flask + werkzeug", "/werkzeug/"),
    ("wtforms", "/wtforms/"),
    ("redis + rq", "/redis/"),
    ("redis + rq", "/rq/"),
    ("stripe", "/stripe/"),
    ("structlog + logging", "/structlog/"),
    ("structlog + logging", "/logging/"),
    ("email + smtplib", "/email/"),
    ("email + smtplib", "smtplib"),
    ("phonenumbers", "/phonenumbers/"),
    ("json", "/json/"),
    ("csv", "csv"),
]


def area(filename: str, function: str) -> str:
    if filename == "~":  # a C function: where it is called from is lost; name what it does
        if "socket" in function or "recv" in function or "send" in function or "select" in function:
            return "waiting: sockets (db, redis, smtp, stripe)"
        if "psycopg" in function or "pq" in function:
            return "psycopg: sending and waiting on PostgreSQL"
        return "C builtins"
    for name, marker in AREAS:
        if marker in filename:
            return name
    return "other python"


def breakdown(profile: cProfile.Profile, wall: float) -> tuple[list[tuple[str, float]], str]:
    stats = pstats.Stats(profile)
    by_area: Counter[str] = Counter()
    for (filename, _, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        by_area[area(filename, function)] += tottime
    shares = [(name, 100 * seconds / wall) for name, seconds in by_area.most_common()]
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(60)
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(40)
    return shares, out.getvalue()


def recovery_cumulative(profile: cProfile.Profile, wall: float, ops: int, top: int = 18) -> list[str]:
    """The app's own functions by cumulative time: % of wall and ms per operation."""
    stats = pstats.Stats(profile)
    rows = []
    for (filename, line, function), (_, calls, _, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "/recovery/" in filename:
            short = filename.split("/recovery/", 1)[1]
            rows.append((cumtime, f"{short}:{line} {function}", calls))
    rows.sort(reverse=True)
    return [
        f"  {100 * c / wall:5.1f}%  {1000 * c / ops:7.2f} ms/op  {n / ops:6.1f} calls/op  {name}"
        for c, name, n in rows[:top]
    ]


# --plain: the counters and timings without cProfile, whose overhead inflates Python's share 2-3 times
PLAIN = False


def profiled(name: str, ops: int, run: Callable[[], None], unit: str = "op") -> None:
    """Run `run` (which does `ops` operations) under cProfile and the counters; print the report."""
    profile = cProfile.Profile()
    with counting() as tally:
        began = time.perf_counter()
        if not PLAIN:
            profile.enable()
        run()
        profile.disable()
        wall = time.perf_counter() - began
    if PLAIN:
        print(
            f"== {name} (no profiler): {1000 * wall / ops:.2f} ms/{unit}; SQL statements"
            f" {1000 * tally.sql_seconds / ops:.2f} ms/{unit}"
            f" ({100 * tally.sql_seconds / wall:.0f}% of wall),"
            f" {tally.statements / ops:.2f} statements and {tally.commits / ops:.2f} commits/{unit}\n",
            flush=True,
        )
        return
    shares, full = breakdown(profile, wall)
    lines = [
        f"== {name}: {ops} {unit}s in {wall:.2f} s under cProfile = {1000 * wall / ops:.2f} ms/{unit}",
        f"per {unit}: {tally.statements / ops:.1f} SQL statements"
        f" ({tally.autocommit / ops:.1f} in autocommit),"
        f" {tally.begins / ops:.1f} transactions, {tally.commits / ops:.1f} commits"
        f" ({tally.durable / ops:.1f} that wrote), {tally.rollbacks / ops:.1f} rollbacks,"
        f" {tally.redis / ops:.1f} Redis commands;"
        f" statements took {1000 * tally.sql_seconds / ops:.2f} ms/{unit}"
        f" ({100 * tally.sql_seconds / wall:.0f}% of wall; BEGIN, COMMIT and ROLLBACK not included)",
        f"in all: {tally.statements} statements, {tally.begins} transactions, {tally.commits} commits"
        f" ({tally.durable} that wrote), {tally.redis} Redis commands",
        "statements by kind (per op): "
        + ", ".join(f"{k!r} {n / ops:.1f}" for k, n in tally.kinds.most_common(12)),
        "share of wall time (own time, by package):",
        *(f"  {share:5.1f}%  {area_name}" for area_name, share in shares[:12]),
        "the app's functions by cumulative time:",
        *recovery_cumulative(profile, wall, ops),
    ]
    report = "\n".join(lines)
    print(report + "\n", flush=True)
    common.OUT.mkdir(exist_ok=True)
    (common.OUT / f"profile-{name}.txt").write_text(report + "\n\n" + full)


# --- the paths -----------------------------------------------------------------


def make_app(**settings: str) -> Any:
    """The tree's app as the benchmarks run it, logging warnings only (a line per request is noise here)."""
    from recovery import create_app

    return create_app({**common.app_config(), "LOG_LEVEL": "WARNING", **settings})


def checkout(ops: int) -> None:
    from bench import checkout_create as cc

    token, refs = cc.prepare(ops + 10)
    with tempfile.TemporaryDirectory() as state:
        sandbox = cc.start_sandbox(state)
        try:
            app = make_app(**cc.stripe_env())
            client = app.test_client()
            headers = {"Authorization": f"Bearer {token}"}

            def create(ref: str) -> None:
                body = {"transaction_ref": ref, "metadata": {"order_id": ref}}
                response = client.post("/v1/payments/stripe/checkout-sessions", json=body, headers=headers)
                assert response.status_code == 201, response.data[:300]

            for ref in refs[:10]:
                create(ref)

            def run() -> None:
                for ref in refs[10:]:
                    create(ref)

            profiled("checkout", ops, run)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)


def webhook(ops: int) -> None:
    from bench import webhooks as wh

    app = make_app(STRIPE_WEBHOOK_SECRET=wh.SECRET)
    org_id = common.ensure_org_and_user(app)
    transactions = wh.ensure_transactions(org_id)
    run_id = str(time.time_ns())[-12:]
    events = wh.make_events(org_id, transactions, ops + 20, run_id)
    client = app.test_client()

    def post(payload: bytes, signature: str) -> None:
        response = client.post(wh.PATH, data=payload, headers={"Stripe-Signature": signature})
        assert response.status_code == 200, response.data[:300]

    for payload, signature in events[:20]:
        post(payload, signature)

    def run() -> None:
        for payload, signature in events[20:]:
            post(payload, signature)

    profiled("webhook", ops, run)


def list_page(ops: int) -> None:
    app = make_app()
    common.ensure_org_and_user(app)
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert match is not None
    signed = client.post(
        "/login",
        data={"csrf_token": match.group(1), "email": common.USER_EMAIL, "password": common.PASSWORD},
    )
    assert signed.status_code == 302, signed.status_code

    def get() -> None:
        response = client.get("/transactions")
        assert response.status_code == 200
        assert response.get_data(as_text=True).count('<td data-label="Reference">') == 50

    for _ in range(20):
        get()

    def run() -> None:
        for _ in range(ops):
            get()

    profiled("list", ops, run)


def import_rows(rows: int) -> None:
    from bench import import_csv

    app = make_app()
    import_id = import_csv.prepare_import(app, import_csv.make_csv(rows))
    from recovery.imports.jobs import import_csv as job

    def run() -> None:
        with app.app_context():
            result = job(import_id)
            assert result["imported"] > 0, result

    profiled("import", rows, run, unit="row")


def send(emails: int) -> None:
    import logging

    from bench import send_messages as sm
    from stripe_sandbox.harness import free_port

    counter = sm.Counter()
    port = free_port()
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    controller = sm.smtp_server(counter, port, "plain", (common.ROOT, common.ROOT))
    controller.start()
    try:
        app = make_app(
            MAIL_SERVER="127.0.0.1",
            MAIL_PORT=str(port),
            MAIL_DEFAULT_SENDER="Bench Sends <payments@bench.example>",
            SEND_BATCH_SIZE="50",
            MAIL_MESSAGES_PER_CONNECTION="100",
        )
        org_id = common.ensure_org_and_user(app, *sm.SEND_ORG)
        sm.park_scan_rows(common.ensure_org_and_user(app, *sm.DUE_ORG), parked=True)
        sends = sm.load_due_sends(org_id, emails)
        from recovery.recoveries.jobs import send_step

        def due() -> int | None:
            with common.raw_connection() as conn:
                row = conn.execute(
                    "SELECT id FROM recovery_attempt WHERE organization_id = %s AND messages_sent = 0"
                    " AND status = 'scheduled' ORDER BY id LIMIT 1",
                    (org_id,),
                ).fetchone()
            return None if row is None else int(row[0])

        def run() -> None:
            with app.app_context():
                attempt = due()
                while attempt is not None:
                    send_step(attempt, 0)
                    attempt = due()

        profiled("send", len(sends), run, unit="email")
        print(f"(the SMTP server received {counter.emails} emails over {counter.connections} connections)")
    finally:
        controller.stop()


PATHS: dict[str, Callable[[int], None]] = {
    "checkout": checkout,
    "webhook": webhook,
    "list": list_page,
    "import": import_rows,
    "send": send,
}
SIZES = {"checkout": 200, "webhook": 500, "list": 200, "import": 20_000, "send": 1000}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--path", action="append", choices=list(PATHS))
    parser.add_argument("--plain", action="store_true", help="no cProfile: wall and SQL time only")
    args = parser.parse_args()
    global PLAIN
    PLAIN = args.plain
    for name in args.path or list(PATHS):
        PATHS[name](SIZES[name])


if __name__ == "__main__":
    main()
