"""Measure our own time around a Checkout Session create, Stripe's round trip excluded.

    .venv/bin/python -m bench.checkout_create [--requests 1000] [--clients 1 --clients 4]

Starts the Stripe sandbox (`python -m stripe_sandbox`, fresh state) and
gunicorn with 2 sync workers on the benchmark database, creates fresh failed
transactions (each with its own customer email, so each create also makes a
Stripe Customer) and an operator API token, then POSTs
/v1/payments/stripe/checkout-sessions once per transaction.

Every answer carries `Server-Timing: app;dur=…, stripe;dur=…`: the time the
app spent on the request and the part of it spent waiting on Stripe calls.
"ours" is the client's wall time for the request minus Stripe's part, i.e.
request in to response out over loopback HTTP, gunicorn and Flask included.
"app" is the server's own view (app minus stripe). Results go to
bench/out/checkout_create-*.json.

`--floor` sends the same requests to `bench.bare_checkout` as well: the
create's own SQL on raw psycopg, with no Flask, ORM or Stripe call, i.e. the
least any crash-safe implementation of this endpoint costs on this machine
("floor"), then to the same SQL in a bare Flask view ("flask"), then to the
same SQL in three round trips instead of twelve ("pipe"), then to the least
SQL with one commit and no reservation ("minimal"), then to an app that
answers without any SQL ("http": loopback HTTP, gunicorn and this client).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import common

SANDBOX_PORT = int(os.environ.get("BENCH_SANDBOX_PORT", "18111"))
SANDBOX_KEY = "sk_test_bench"
ORG_SLUG = "bench-checkout"
COLUMNS = ("p50 ms", "p95 ms", "p99 ms", "max ms")
FLOORS = (
    ("floor", "bench.bare_checkout:app"),
    ("flask", "bench.bare_checkout:flask_app"),
    ("pipe", "bench.bare_checkout:pipelined_app"),
    ("minimal", "bench.bare_checkout:minimal_app"),
    ("http", "bench.bare_checkout:http_app"),
)


def stripe_env() -> dict[str, str]:
    return {
        "STRIPE_SECRET_KEY": SANDBOX_KEY,
        "STRIPE_API_BASE": f"http://{common.HOST}:{SANDBOX_PORT}",
        "BASE_URL": f"http://{common.HOST}:{common.PORT}",
        "LOG_LEVEL": "WARNING",
    }


def start_sandbox(state_dir: str) -> subprocess.Popen[bytes]:
    if not common.port_is_free(SANDBOX_PORT):
        sys.exit(f"Port {SANDBOX_PORT} is taken; set BENCH_SANDBOX_PORT to a free one.")
    common.OUT.mkdir(exist_ok=True)
    log = (common.OUT / "sandbox.log").open("wb")
    env = {
        **os.environ,
        "SANDBOX_PORT": str(SANDBOX_PORT),
        "SANDBOX_API_KEY": SANDBOX_KEY,
        "SANDBOX_DATABASE": str(Path(state_dir) / "sandbox.sqlite3"),
        "SANDBOX_WEBHOOK_URLS": "",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "stripe_sandbox"],
        cwd=common.ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    common.wait_for_http(SANDBOX_PORT, "/v1/events", timeout=30)
    return process


def prepare(count: int) -> tuple[str, list[str]]:
    """Create the organization, `count` fresh transactions and an operator token."""
    from recovery.audit import Actor
    from recovery.extensions import db
    from recovery.models import Role, Transaction
    from recovery.organizations.services import create_organization, get_by_slug
    from recovery.tokens.services import create_token

    os.environ.update(stripe_env())
    app = common.make_app()
    common.ensure_schema(app)
    run = time.strftime("%Y%m%d%H%M%S")
    with app.app_context():
        organization = get_by_slug(db.session, ORG_SLUG) or create_organization(
            db.session, ORG_SLUG, "Bench Checkout Co"
        )
        db.session.flush()
        refs = [f"CHK-{run}-{i:06d}" for i in range(count)]
        db.session.add_all(
            Transaction(
                organization_id=organization.id,
                transaction_ref=ref,
                amount=1000 + i,
                currency="usd",
                customer_email=f"buyer-{run}-{i}@example.com",
                customer_locale="en-US",
                failure_code="card_declined",
            )
            for i, ref in enumerate(refs)
        )
        _token, raw = create_token(
            db.session,
            organization.id,
            f"bench {run}",
            Role.OPERATOR,
            created_by=None,
            actor=Actor.system(organization.id, "bench"),
        )
        db.session.commit()
        # As autovacuum would have by now in a running database: without statistics
        # for the rows just added, the planner scans the organization's transactions
        # instead of using the (organization, reference) key.
        db.session.execute(sa.text("ANALYZE transaction, checkout_session, stripe_customer, api_token"))
        db.session.commit()
    return raw, refs


def one(conn: HTTPConnection, token: str, ref: str) -> dict[str, float]:
    body = json.dumps({"transaction_ref": ref, "metadata": {"order_id": ref}})
    started = time.perf_counter()
    conn.request(
        "POST",
        "/v1/payments/stripe/checkout-sessions",
        body=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    payload = response.read()
    wall = (time.perf_counter() - started) * 1000
    if response.status != 201:
        raise RuntimeError(f"{ref}: HTTP {response.status} {payload[:300]!r}")
    timing = dict(part.strip().split(";dur=") for part in response.headers["Server-Timing"].split(","))
    app_ms, stripe_ms = float(timing["app"]), float(timing["stripe"])
    return {"wall": wall, "stripe": stripe_ms, "ours": wall - stripe_ms, "app": app_ms - stripe_ms}


def run(token: str, refs: list[str], clients: int) -> list[dict[str, float]]:
    results: list[dict[str, float]] = []
    lock = threading.Lock()
    chunks = [refs[i::clients] for i in range(clients)]

    def client(chunk: list[str]) -> None:
        conn = HTTPConnection(common.HOST, common.PORT, timeout=30)
        for ref in chunk:
            sample = one(conn, token, ref)
            with lock:
                results.append(sample)
        conn.close()

    threads = [threading.Thread(target=client, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def summary(samples: list[dict[str, float]], key: str) -> dict[str, float]:
    values = sorted(s[key] for s in samples)
    return {q: round(common.percentile(values, float(q[1:])), 2) for q in ("p50", "p95", "p99")} | {
        "max": round(values[-1], 2)
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="creates per client setting")
    parser.add_argument("--clients", type=int, action="append", help="concurrent clients (repeatable)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--floor", action="store_true", help="also measure bench.bare_checkout")
    args = parser.parse_args()
    client_counts = args.clients or [1, 4]
    common.ensure_database()
    busy = common.idle_check()
    total = (args.warmup + args.requests * len(client_counts)) * (1 + len(FLOORS) if args.floor else 1)
    token, refs = prepare(total)
    report: dict[str, Any] = {"requests": args.requests, "busy_before_percent": round(busy, 1), "runs": {}}
    print(f"{'server':<6} {'clients':>7} {'n':>6} {'measure':<8}" + "".join(f"{h:>8}" for h in COLUMNS))
    with tempfile.TemporaryDirectory() as state:
        sandbox = start_sandbox(state)
        try:
            with common.gunicorn(workers=2, extra_env=stripe_env(), log_name="gunicorn-checkout.log"):
                refs = measure("app", token, refs, client_counts, args, report)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)
    if args.floor:
        for server, app in FLOORS:
            with common.gunicorn(
                workers=2, log_name=f"gunicorn-{server}-checkout.log", app=app, ready_path="/"
            ):
                refs = measure(server, token, refs, client_counts, args, report)
    print(f"written to {common.write_json('checkout_create', report)}")


def measure(
    server: str,
    token: str,
    refs: list[str],
    client_counts: list[int],
    args: argparse.Namespace,
    report: dict[str, Any],
) -> list[str]:
    """Warm up, then one run per client count; return the references not used."""
    run(token, refs[: args.warmup], 1)
    refs = refs[args.warmup :]
    keys = ("ours", "app", "stripe", "wall") if server == "app" else ("wall",)
    for clients in client_counts:
        samples = run(token, refs[: args.requests], clients)
        refs = refs[args.requests :]
        result = report["runs"].setdefault(server, {})[str(clients)] = {k: summary(samples, k) for k in keys}
        for key in keys:
            row = "".join(f"{result[key][c.split()[0]]:>8}" for c in COLUMNS)
            print(f"{server:<6} {clients:>7} {len(samples):>6} {key:<8}{row}")
    return refs


if __name__ == "__main__":
    main()
