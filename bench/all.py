"""Every hot path against its floor, interleaved in one run: the table of issue 17.

    .venv/bin/python -m bench.seed_transactions            # once: the list's million rows
    .venv/bin/python -m bench.all                          # --repeat 3 --seconds 10
    .venv/bin/python -m bench.all --tree /tmp/old-main --tree .   # old main and this tree, same run
    .venv/bin/python -m bench.all --path list --path send  # some of the paths only

Each round measures every path once for every tree, in turn: the app, then
its floor, in a fresh process (`--measure PATH`, BENCH_TREE set to the tree)
whose `recovery`, gunicorn and workers are the tree's; the benchmark code,
the floors and the Stripe sandbox are this checkout's. Rounds repeat
(`--repeat`), so a slow minute on the shared machine lands on every side.

- checkout: our time (wall minus Stripe's part), p95 of 300 creates from one
  client; floor: the create's SQL in a bare Flask view (bench.bare_checkout:flask_app).
- webhook: accepted events/s, 8 senders in a closed loop; floor: verify and
  INSERT (bench.bare_webhook).
- list: the first page's p50 at 40 req/s (and in a closed loop), 8 clients;
  floor: hello-world Flask under the same gunicorn (bench.hello).
- import: rows/s of a 100,000-row CSV through the RQ job; floor: the
  part-by-part ceiling of bench.import_costs.
- send: emails/s of 2 RQ workers, batches of 50; floor: the same emails, byte
  for byte, from smtplib over one connection.

Not here (each seeds organizations of its own; docs/performance.md, "Rules
(issue 18)"): bench.rules_preview, the rules preview against one GROUP BY,
and bench.bulk_start_rules, bulk starts with rules against without.

The ratio is app / floor in each round (ms: lower is better; per second:
higher is better). It prints the raw figures as they come, then the table
(median and range over the rounds); JSON in bench/out/all-*.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common

# (path, metric, unit): the figures the table shows, read from each side's result by metric
METRICS = [
    ("checkout", "p95_ms", "ms, p95"),
    ("checkout", "p50_ms", "ms, p50"),
    ("webhook", "per_s", "events/s"),
    ("webhook", "p99_ms", "ms, p99"),
    ("list", "p50_40_ms", "ms, p50 at 40/s"),
    ("list", "p50_closed_ms", "ms, p50 closed"),
    ("list", "rps_closed", "req/s closed"),
    ("import", "per_s", "rows/s"),
    ("send", "per_s", "emails/s"),
]
PATHS = ["checkout", "webhook", "list", "import", "send"]


# --- one path, in its own process --------------------------------------------


def measure_checkout(args: argparse.Namespace) -> dict[str, Any]:
    from bench import checkout_create as cc

    warm, n = 50, args.requests
    token, refs = cc.prepare(2 * (warm + n))
    with tempfile.TemporaryDirectory() as state:
        sandbox = cc.start_sandbox(state)
        try:
            with common.gunicorn(extra_env=cc.stripe_env(), log_name="gunicorn-checkout.log"):
                cc.run(token, refs[:warm], 1)
                app = cc.run(token, refs[warm : warm + n], 1)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)
    refs = refs[warm + n :]
    with common.gunicorn(
        log_name="gunicorn-flask-checkout.log", app="bench.bare_checkout:flask_app", ready_path="/"
    ):
        cc.run(token, refs[:warm], 1)
        floor = cc.run(token, refs[warm : warm + n], 1)

    def figures(samples: list[dict[str, float]], key: str) -> dict[str, float]:
        summary = cc.summary(samples, key)
        return {"p50_ms": summary["p50"], "p95_ms": summary["p95"], "p99_ms": summary["p99"]}

    return {"app": figures(app, "ours"), "floor": figures(floor, "wall")}


def measure_webhook(args: argparse.Namespace) -> dict[str, Any]:
    from redis import Redis

    from bench import webhooks as wh
    from bench.bare_webhook import TABLE

    org_id = common.ensure_org_and_user(common.make_app())
    transactions = wh.ensure_transactions(org_id)
    with common.raw_connection(autocommit=True) as conn:
        conn.execute(TABLE)
        conn.execute("VACUUM ANALYZE webhook_event, bench_bare_event")
    redis = Redis.from_url(common.REDIS_URL)
    redis.flushdb()
    run = str(time.time_ns())[-12:]
    count = int(3000 * args.seconds)
    results = {}
    for side, port in (("app", common.PORT), ("floor", common.PORT + 1)):
        server = (
            common.gunicorn(
                log_name="gunicorn-webhooks.log",
                extra_env={"STRIPE_WEBHOOK_SECRET": wh.SECRET, "LOG_LEVEL": "WARNING"},
            )
            if side == "app"
            else wh.bare_server(2, port)
        )
        with server:
            wh.send(port, wh.make_events(org_id, transactions, 400, f"{run}{side}w"), 8, 3)
            result = wh.send(port, wh.make_events(org_id, transactions, count, run + side), 8, args.seconds)
        results[side] = {
            "per_s": result["accepted_per_s"],
            "p99_ms": result["p99_ms"],
            "p50_ms": result["p50_ms"],
        }
        redis.flushdb()  # the app's queued jobs: not drained here
    return results


def measure_list(args: argparse.Namespace) -> dict[str, Any]:
    from bench import list_page

    common.ensure_org_and_user(common.make_app())
    path = "/transactions"
    sides: dict[str, list[common.LoadResult]] = {}
    with common.gunicorn():
        cookies = [common.sign_in() for _ in range(8)]
        common.run_load("first", path, cookies, seconds=3, max_requests=10_000)
        sides["app"] = [
            common.run_load("first", path, cookies, seconds=args.seconds, max_requests=50_000, rate=rate)
            for rate in (None, 40.0)
        ]
    sides["floor"] = list_page.floor(cookies, [None, 40.0], args.seconds, 50_000)
    for side, (closed, paced) in sides.items():
        print(f"{side}: {closed.row()}\n{side}: {paced.row()}", file=sys.stderr)
    return {
        side: {"p50_40_ms": paced.p50_ms, "p50_closed_ms": closed.p50_ms, "rps_closed": round(closed.rps)}
        for side, (closed, paced) in sides.items()
    }


def measure_import(args: argparse.Namespace) -> dict[str, Any]:
    from bench import import_costs, import_csv

    rows = 100_000
    data = import_csv.csv_file(rows).read_bytes()
    # Validation first, in this fresh process, as bench.import_costs measures it.
    read_us, validate_us, _ = import_costs.read_and_validate(rows)
    app = common.make_app()
    job = import_csv.run_worker(
        app, import_csv.prepare_import(app, data), common.OUT / "import_worker.log", nice=0
    )
    insert_us, _, _ = import_costs.store_us()
    return {
        "app": {"per_s": round(rows / job["seconds"])},
        "floor": {
            "per_s": round(import_costs.CORES * 1e6 / (read_us + validate_us + insert_us)),
            "read_us": round(read_us, 1),
            "validate_us": round(validate_us, 1),
            "insert_us": round(insert_us, 1),
        },
    }


def measure_send(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    from bench import send_messages as sm
    from stripe_sandbox.harness import free_port

    app = common.make_app()
    send_org = common.ensure_org_and_user(app, *sm.SEND_ORG)
    sm.park_scan_rows(common.ensure_org_and_user(app, *sm.DUE_ORG), parked=True)
    sm.reset_org(send_org)
    if sm.other_due():
        sys.exit(f"{sm.other_due()} other attempts are due: the workers would send them too.")
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    counter = sm.Counter()
    port = free_port()
    controller = sm.smtp_server(counter, port, "plain", (Path(), Path()))
    controller.start()
    try:
        settings = {"SEND_BATCH_SIZE": "50", "MAIL_MESSAGES_PER_CONNECTION": "100"}
        options = argparse.Namespace(messages=args.messages, workers=2)
        app_run = sm.deliver("batched", app, send_org, counter, port, options, settings, keep=True)
        floor_run = sm.plain_smtplib(counter, port, counter.kept)
    finally:
        controller.stop()
    return {
        "app": {"per_s": app_run["emails_per_s"], "received": app_run["received"]},
        "floor": {"per_s": floor_run["emails_per_s"], "bytes_per_email": floor_run["bytes_per_email"]},
    }


MEASURES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "checkout": measure_checkout,
    "webhook": measure_webhook,
    "list": measure_list,
    "import": measure_import,
    "send": measure_send,
}


# --- the run -----------------------------------------------------------------


def spawn(path: str, tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`--measure path` in a fresh process whose app is the tree's; its result."""
    common.OUT.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "bench.all", "--measure", path]
    command += [
        "--seconds",
        str(args.seconds),
        "--requests",
        str(args.requests),
        "--messages",
        str(args.messages),
    ]
    with (common.OUT / f"all-{path}.log").open("ab") as log:
        done = subprocess.run(
            command,
            cwd=common.ROOT,
            env={**os.environ, "BENCH_TREE": str(tree)},
            stdout=subprocess.PIPE,
            stderr=log,
            check=False,
        )
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"error": f"exit {done.returncode}; see {common.OUT / f'all-{path}.log'}"}
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


def figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def spread(values: list[float]) -> str:
    """The median and the range: `12.3 [11.9–14.0]`."""
    if not values:
        return "-"
    if len(values) == 1:
        return figure(values[0])
    return f"{figure(statistics.median(values))} [{figure(min(values))}–{figure(max(values))}]"


def table(trees: list[Path], rounds: list[dict[str, Any]]) -> list[str]:
    """path, tree, app, floor, ratio: median [min–max] over the rounds."""
    lines = [f"{'path':<9} {'measure':<16} {'tree':<16} {'app':>26} {'floor':>26} {'app/floor':>22}"]
    for path, metric, unit in METRICS:
        medians, ratio_medians = [], []
        for tree in trees:
            app, floor, ratio = [], [], []
            for one in rounds:
                sides = one.get(path, {}).get(str(tree), {})
                a, f = sides.get("app", {}).get(metric), sides.get("floor", {}).get(metric)
                if a is not None:
                    app.append(float(a))
                if f is not None:
                    floor.append(float(f))
                if a and f:
                    ratio.append(float(a) / float(f))
            if not app:
                continue
            medians.append(statistics.median(app))
            ratio_medians.append(statistics.median(ratio) if ratio else math.nan)
            ratios = spread([round(r, 2) for r in ratio])
            lines.append(
                f"{path:<9} {unit:<16} {tree.name:<16} {spread(app):>26} {spread(floor):>26} {ratios:>22}"
            )
        if len(medians) == 2 and medians[0]:
            change = 100 * (medians[1] / medians[0] - 1)
            better = "slower" if (change > 0) == unit.startswith("ms") else "faster"
            versus = f"{trees[1].name} vs {trees[0].name}"
            ratios_moved = f"app/floor {ratio_medians[0]:.2f} → {ratio_medians[1]:.2f}"
            lines.append(
                f"{'':<9} {'':<16} {versus:<16} app median {change:+.1f}% ({better}); {ratios_moved}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tree", action="append", type=Path, help="checkout whose app is measured (repeatable)"
    )
    parser.add_argument(
        "--path", action="append", choices=PATHS, help="measure only these paths (repeatable)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=10, help="per load (list, webhook; default 10)")
    parser.add_argument("--requests", type=int, default=300, help="checkout creates per side (default 300)")
    parser.add_argument("--messages", type=int, default=3000, help="emails per send run (default 3000)")
    parser.add_argument("--measure", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        # Stopped from outside: leave through the context managers, which stop gunicorn and the sandbox.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        print("RESULT " + json.dumps(MEASURES[args.measure](args)), flush=True)
        return

    trees = [tree.resolve() for tree in (args.tree or [common.ROOT])]
    for tree in trees:
        if not (tree / "recovery" / "__init__.py").exists():
            sys.exit(f"{tree} is not a checkout of this app (no recovery/__init__.py)")
    paths = args.path or PATHS
    common.ensure_database()
    busy = common.idle_check()
    print(f"trees: {', '.join(map(str, trees))}; {args.repeat} rounds of {', '.join(paths)}", flush=True)
    rounds: list[dict[str, Any]] = []
    for number in range(1, args.repeat + 1):
        one: dict[str, Any] = {}
        for path in paths:
            for tree in trees:
                began = time.perf_counter()
                result = spawn(path, tree, args)
                one.setdefault(path, {})[str(tree)] = result
                took = time.perf_counter() - began
                print(
                    f"round {number} {path:<9} {tree.name:<16} {took:5.0f} s {json.dumps(result)}", flush=True
                )
        rounds.append(one)
    print()
    print("\n".join(table(trees, rounds)))
    written = common.write_json(
        "all", {"trees": [str(t) for t in trees], "busy_before_pct": round(busy), "rounds": rounds}
    )
    print(f"written {written.relative_to(common.ROOT)}")


if __name__ == "__main__":
    main()
