"""Benchmark: signed Stripe events to gunicorn (2 workers) on PostgreSQL and Redis, then the queue drain.

.venv/bin/python -m bench.webhooks                 # --seconds 20 --senders 8 --max-events 60000

1. The app: 8 senders post pre-signed `payment_intent.payment_failed` events
   (each names one of the bench organization's transactions, so processing
   writes a timeline entry) as fast as answers come (closed loop); no RQ
   worker runs meanwhile. Accepted events/s and latency percentiles.
2. The drain: two `flask worker --burst` processes work the queue; events/s.
3. The floor: the same load against `bench.bare_webhook` (verify + insert only),
   and the ratio of the two accepted rates.

.venv/bin/python -m bench.webhooks --drain-only 6000

   Only step 2: stores 6,000 events through the app in this process (Flask's
   test client, nothing timed), then times the two workers draining them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

import stripe
from redis import Redis

from bench.common import (
    APP_ROOT,
    HOST,
    OUT,
    PORT,
    REDIS_URL,
    ROOT,
    app_config,
    cpu_times,
    ensure_database,
    ensure_org_and_user,
    ensure_schema,
    gunicorn,
    idle_check,
    make_app,
    percentile,
    raw_connection,
    write_json,
)

SECRET = "whsec_bench"
PATH = "/v1/payments/stripe/webhooks"
TRANSACTIONS = 1000


def ensure_transactions(org_id: int) -> list[tuple[int, str]]:
    with raw_connection() as conn:
        existing = conn.execute(
            "SELECT count(*) FROM transaction WHERE organization_id = %s AND transaction_ref LIKE 'WH-%%'",
            (org_id,),
        ).fetchone()[0]
        if existing < TRANSACTIONS:
            conn.execute(
                "INSERT INTO transaction (organization_id, transaction_ref, amount, currency, status,"
                " metadata, source, failed_at, created_at, updated_at)"
                " SELECT %s, 'WH-' || lpad(g::text, 6, '0'), 5000, 'usd', 'recovering', '{}', 'api',"
                " now(), now(), now()"
                " FROM generate_series(1, %s) g ON CONFLICT DO NOTHING",
                (org_id, TRANSACTIONS),
            )
        rows = conn.execute(
            "SELECT id, transaction_ref FROM transaction"
            " WHERE organization_id = %s AND transaction_ref LIKE 'WH-%%' ORDER BY id LIMIT %s",
            (org_id, TRANSACTIONS),
        ).fetchall()
        conn.commit()
    return [(int(r[0]), str(r[1])) for r in rows]


def make_events(
    org_id: int, transactions: list[tuple[int, str]], count: int, run: str
) -> list[tuple[bytes, str]]:
    """Pre-signed bodies: signing is the sender's cost, not the server's."""
    now = int(time.time())
    events = []
    for n in range(count):
        txn_id, ref = transactions[n % len(transactions)]
        intent = {
            "id": f"pi_bench{run}{n:08d}",
            "object": "payment_intent",
            "amount": 5000,
            "amount_received": 0,
            "currency": "usd",
            "status": "requires_payment_method",
            "metadata": {
                "organization_id": str(org_id),
                "transaction_id": str(txn_id),
                "transaction_ref": ref,
            },
            "last_payment_error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
            },
        }
        event = {
            "id": f"evt_bench{run}{n:08d}",
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": now,
            "data": {"object": intent},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": "payment_intent.payment_failed",
        }
        payload = json.dumps(event, indent=2)
        events.append(
            (payload.encode(), stripe.WebhookSignature.generate_signature_header(payload, SECRET, now))
        )
    return events


def send(port: int, events: list[tuple[bytes, str]], senders: int, seconds: float) -> dict[str, Any]:
    """Closed loop: each sender posts its next event when the last one was answered."""
    latencies: list[list[float]] = [[] for _ in range(senders)]
    errors = [0] * senders
    deadline = time.perf_counter() + seconds

    def sender(index: int) -> None:
        mine = events[index::senders]
        conn = HTTPConnection(HOST, port, timeout=30)
        for body, signature in mine:
            if time.perf_counter() >= deadline:
                break
            began = time.perf_counter()
            try:
                conn.request(
                    "POST",
                    PATH,
                    body=body,
                    headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
                )
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, HTTPException):
                conn.close()
                ok = False
            latencies[index].append((time.perf_counter() - began) * 1000)
            if not ok:
                errors[index] += 1
        conn.close()

    busy_before, total_before = cpu_times()
    began = time.perf_counter()
    threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    elapsed = time.perf_counter() - began
    busy_after, total_after = cpu_times()
    flat = sorted(x for per in latencies for x in per)
    return {
        "events": len(flat),
        "errors": sum(errors),
        "seconds": round(elapsed, 2),
        "accepted_per_s": round((len(flat) - sum(errors)) / elapsed, 1),
        "p50_ms": round(percentile(flat, 50), 2),
        "p95_ms": round(percentile(flat, 95), 2),
        "p99_ms": round(percentile(flat, 99), 2),
        "max_ms": round(flat[-1], 2) if flat else None,
        "machine_cpu_pct": round(100 * (busy_after - busy_before) / max(1, total_after - total_before)),
    }


def send_wrk(port: int, events: list[tuple[bytes, str]], senders: int, seconds: float) -> dict[str, Any]:
    """The same closed loop from wrk (C, one thread, `senders` connections): less of the two cores."""
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("--client wrk needs wrk (Debian: apt-get install wrk).")
    path = OUT / "wrk-events.bin"
    with path.open("wb") as out:
        for body, signature in events:
            out.write(f"{signature} {len(body)}\n".encode() + body)
    busy_before, total_before = cpu_times()
    finished = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{senders}",
            f"-d{seconds:.0f}s",
            "--latency",
            "-s",
            str(ROOT / "bench" / "wrk_events.lua"),
            f"http://{HOST}:{port}",
            "--",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    busy_after, total_after = cpu_times()
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    elapsed = result["duration_us"] / 1e6
    errors = result["status_errors"] + result["socket_errors"]
    return {
        "events": result["requests"],
        "errors": errors,
        "seconds": round(elapsed, 2),
        "accepted_per_s": round((result["requests"] - errors) / elapsed, 1),
        **{f"{q}_ms": round(result[f"{q}_us"] / 1000, 2) for q in ("p50", "p95", "p99", "max")},
        "machine_cpu_pct": round(100 * (busy_after - busy_before) / max(1, total_after - total_before)),
        "duplicates_possible": result["requests"] > len(events),
    }


def drain(workers: int, queued: int) -> dict[str, Any]:
    """Run `flask worker --burst` processes until the queue is empty; events/s processed.

    "per_s" counts the workers' start-up (loading the app, ~2 s) against them;
    "per_s_running" takes out the start-up of the same workers on an empty
    queue, measured first: the rate a running worker pool drains at.
    """
    startup = _burst(workers, ["--queue", "bench-empty"])
    elapsed = _burst(workers, [])
    return {
        "workers": workers,
        "processed": queued,
        "seconds": round(elapsed, 2),
        "startup_seconds": round(startup, 2),
        "per_s": round(queued / elapsed, 1),
        "per_s_running": round(queued / max(elapsed - startup, 1e-3), 1),
    }


def _burst(workers: int, queue: list[str]) -> float:
    env = {**os.environ, **app_config(), "STRIPE_WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "WARNING"}
    flask = str(Path(sys.executable).parent / "flask")
    logs = [(OUT / f"webhook-worker-{i}.log").open("wb") for i in range(workers)]
    began = time.perf_counter()
    processes = [
        subprocess.Popen(
            [flask, "--app", "wsgi", "worker", "--burst", "--without-scheduler", *queue],
            cwd=APP_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    for process in processes:
        process.wait(timeout=3600)
    elapsed = time.perf_counter() - began
    for log in logs:
        log.close()
    return elapsed


def drain_only(org_id: int, transactions: list[tuple[int, str]], count: int, run: str) -> dict[str, Any]:
    """Store `count` events through the app in this process, then time two workers draining them."""
    from recovery import create_app

    app = create_app({**app_config(), "STRIPE_WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "WARNING"})
    client = app.test_client()
    for payload, signature in make_events(org_id, transactions, count, run + "d"):
        response = client.post(PATH, data=payload, headers={"Stripe-Signature": signature})
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.data[:300]!r}")
    return drain(2, int(Redis.from_url(REDIS_URL).llen("rq:queue:default")))


@contextmanager
def bare_server(workers: int, port: int) -> Iterator[None]:
    with gunicorn(
        workers=workers,
        port=port,
        log_name="gunicorn-bare-webhook.log",
        extra_env={"BARE_WEBHOOK_SECRET": SECRET},
        app="bench.bare_webhook:app",
        ready_path="/",
    ):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--max-events", type=int, default=60_000)
    parser.add_argument("--drain-only", type=int, metavar="EVENTS", help="store EVENTS, time only the drain")
    parser.add_argument(
        "--client",
        choices=("python", "wrk"),
        default="python",
        help="the load generator: Python threads (default), or wrk, which leaves the server more CPU",
    )
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    ensure_database()
    app = make_app()
    ensure_schema(app)
    org_id = ensure_org_and_user(app)
    transactions = ensure_transactions(org_id)
    from bench.bare_webhook import TABLE

    with raw_connection(autocommit=True) as conn:
        conn.execute(TABLE)
        # Earlier runs leave their rows and dead index entries behind; start each
        # run from the state autovacuum keeps a running database in, not from
        # whatever it has or has not got to yet (it ran during runs and halved them).
        conn.execute("VACUUM ANALYZE webhook_event, bench_bare_event")
    run = time.strftime("%H%M%S")
    load = send_wrk if args.client == "wrk" else send
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    idle = idle_check()

    if args.drain_only:
        print(
            f"draining (2 RQ workers): {json.dumps(drain_only(org_id, transactions, args.drain_only, run))}"
        )
        return
    warm = make_events(org_id, transactions, 400, run + "w")
    main_events = make_events(org_id, transactions, args.max_events, run)
    with gunicorn(
        workers=2,
        log_name="gunicorn-webhooks.log",
        extra_env={"STRIPE_WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "WARNING"},
    ):
        send(PORT, warm, args.senders, 10)  # warm-up: connections, imports, caches
        app_result = load(PORT, main_events, args.senders, args.seconds)
    queued = int(redis.llen("rq:queue:default"))
    drained = drain(2, queued)

    bare_events = make_events(org_id, transactions, args.max_events, run + "b")
    bare_port = PORT + 1
    with bare_server(2, bare_port):
        send(bare_port, make_events(org_id, transactions, 400, run + "bw"), args.senders, 10)
        bare = load(bare_port, bare_events, args.senders, args.seconds)

    ratio = (
        round(app_result["accepted_per_s"] / bare["accepted_per_s"], 2) if bare["accepted_per_s"] else None
    )
    result = {
        "client": args.client,
        "idle_busy_pct": round(idle),
        "app": app_result,
        "queue": {"queued": queued, **drained},
        "bare": bare,
        "app_to_bare": ratio,
    }
    print(f"receiving (gunicorn -w 2, {args.senders} senders, {args.client}): {json.dumps(app_result)}")
    print(f"draining (2 RQ workers): {json.dumps(drained)}")
    print(f"bare verify+insert (gunicorn -w 2): {json.dumps(bare)}")
    print(f"app / bare accepted rate: {ratio}")
    print(f"written to {write_json('webhooks', result)}")


if __name__ == "__main__":
    main()
