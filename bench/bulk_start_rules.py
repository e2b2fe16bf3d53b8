"""Benchmark: 100,000 recoveries started in bulk, with 20 rules choosing each one's campaign, against none.

    .venv/bin/python -m bench.bulk_start_rules                 # --count 100000 --rounds 2
    .venv/bin/python -m bench.bulk_start_rules --count 5000    # a quick check
    .venv/bin/python -m bench.bulk_start_rules --together      # both sides at once, two processes

Issue 18: "Starting 100,000 recoveries in bulk with rules: the rule choice adds
at most 10% to the bulk start's time without rules."

Two organizations with the same 100,000 failed transactions (the same seeded
rows as bench.rules_preview's: every customer reachable by email, so each one
is started): `bench-bulk-rules` has 20 rules (bench.rules_preview.RULES, every
winner starting a campaign: its do-not-recover and hold rules start the
default campaign here), `bench-bulk-plain` has no campaigns and no rules, so
its recoveries follow the organization's schedule as before issue 18.

Each side runs the product's bulk start path (recovery.recoveries.bulk):
bulk starts of MAX_TRANSACTIONS ids each, created and committed (their RQ job
is queued and left unrun), then each run in this process as its job does
(`bulk.run`: a chunk of 50 `start_recovery`s and a commit at a time, the first
sends placed in Redis after each commit). Timed: from the first create to the
last chunk's commit. Before each side, untimed: its attempts, audit rows and
bulk starts deleted, its transactions failed again, VACUUM ANALYZE, Redis
database emptied. Rounds alternate which side goes first.

With `--together` the two sides run at the same time, each in its own
process (started together once both are ready): on a shared machine whose load
comes and goes, both then see the same minutes, at the price of competing with
each other for the two cores and the database. The side that finishes first
leaves the machine to the other, so the run also prints the ratio of the two
sides' starts per second while both ran (from the attempts' own times).

After the rules side it checks that the rules decided: every attempt names
its rule. Prints each round's seconds, starts/s and the ratio (with / without),
then min/median/max. JSON in bench/out/bulk_start_rules-*.json.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis

from bench import common
from bench.rules_preview import RULES, copy_rows, install_rules, rows

WITH_RULES = ("bench-bulk-rules", "Bench Bulk Rules", "owner@bench-bulk-rules.example")
WITHOUT_RULES = ("bench-bulk-plain", "Bench Bulk Plain", "owner@bench-bulk-plain.example")
ROWS = 100_000
TARGET = 1.10
SIDES = ("rules", "plain")


def make_app() -> Any:
    from recovery import create_app

    # The log lines (one per start) cost both sides alike; printed, they would drown the figures.
    return create_app({**common.app_config(), "LOG_LEVEL": "WARNING"})


def remove_rules(organization_id: int) -> None:
    """No campaigns, no rules: what every organization was before issue 18 (and what tests' orgs are)."""
    with common.raw_connection() as conn:
        conn.execute("DELETE FROM recovery_rule WHERE organization_id = %s", (organization_id,))
        conn.execute(
            "DELETE FROM campaign_version WHERE campaign_id IN"
            " (SELECT id FROM campaign WHERE organization_id = %s)",
            (organization_id,),
        )
        conn.execute("DELETE FROM campaign WHERE organization_id = %s", (organization_id,))
        conn.commit()


def seed(organization_id: int) -> None:
    """The organization's ROWS failures, the same rows for both organizations; once."""
    with common.raw_connection() as conn:
        have = conn.execute(
            "SELECT count(*) FROM transaction WHERE organization_id = %s", (organization_id,)
        ).fetchone()[0]  # type: ignore[index]
        if have == ROWS:
            return
        conn.execute("DELETE FROM transaction WHERE organization_id = %s", (organization_id,))
        # Failed in the last 60 days: inside every rule's "failed within" that is meant to match.
        now, newest, span = datetime.now(UTC), timedelta(minutes=10), timedelta(days=60)
        copy_rows(
            conn, rows(organization_id, ROWS, now, prefix="BULK", newest=newest, span=span, reachable=True)
        )
        conn.commit()
    with common.raw_connection(autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) transaction")


def reset(organization_id: int) -> None:
    """Undo a side's run: no attempts, every transaction failed again; VACUUM ANALYZE, an empty Redis."""
    with common.raw_connection() as conn:
        for table in ("message", "card_retry", "recovery_attempt", "audit_event", "bulk_start"):
            conn.execute(f"DELETE FROM {table} WHERE organization_id = %s", (organization_id,))  # type: ignore[arg-type]
        conn.execute(
            "UPDATE transaction SET status = 'failed', review_status = NULL, review_reason = NULL,"
            " held_at = NULL, no_recovery_reason = NULL WHERE organization_id = %s AND (status <> 'failed'"
            " OR review_status IS NOT NULL OR no_recovery_reason IS NOT NULL)",
            (organization_id,),
        )
        conn.commit()
    with common.raw_connection(autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) transaction, recovery_attempt, audit_event, bulk_start")
    Redis.from_url(common.REDIS_URL).flushdb()


def transaction_ids(organization_id: int, count: int) -> list[int]:
    with common.raw_connection() as conn:
        found = conn.execute(
            "SELECT id FROM transaction WHERE organization_id = %s ORDER BY id LIMIT %s",
            (organization_id, count),
        ).fetchall()
    return [int(row[0]) for row in found]


def bulk_start(app: Any, organization_id: int, user_id: int, ids: list[int]) -> dict[str, Any]:
    """The product's bulk start of `ids`, MAX_TRANSACTIONS a bulk start; seconds and counts."""
    from recovery.audit import Actor
    from recovery.extensions import db
    from recovery.recoveries import bulk

    actor = Actor(organization_id, "Bench bulk start", user_id)
    with app.app_context():
        began_at, began = datetime.now(UTC), time.perf_counter()
        bulk_ids = []
        for first in range(0, len(ids), bulk.MAX_TRANSACTIONS):
            row = bulk.create(db.session, actor, ids[first : first + bulk.MAX_TRANSACTIONS], "any")
            db.session.commit()  # the request's commit; its RQ job is queued and never run
            bulk_ids.append(row.id)
        for bulk_id in bulk_ids:
            bulk.run(db.session, bulk_id)
        seconds, ended_at = time.perf_counter() - began, datetime.now(UTC)
        db.session.remove()
    with common.raw_connection() as conn:
        started, refused = conn.execute(
            "SELECT sum(started), sum(refused) FROM bulk_start WHERE organization_id = %s", (organization_id,)
        ).fetchone()  # type: ignore[misc]
        reasons = conn.execute(
            "SELECT reasons FROM bulk_start WHERE organization_id = %s AND refused > 0", (organization_id,)
        ).fetchall()
        by_rule = conn.execute(
            "SELECT coalesce(rule_name, '(none)'), count(*) FROM recovery_attempt WHERE organization_id = %s"
            " GROUP BY 1 ORDER BY 2 DESC",
            (organization_id,),
        ).fetchall()
    return {
        "began_at": began_at,
        "ended_at": ended_at,
        "seconds": seconds,
        "per_s": len(ids) / seconds,
        "started": int(started or 0),
        "refused": int(refused or 0),
        "refusals": [row[0] for row in reasons][:3],
        "by_rule": {name: count for name, count in by_rule},
    }


def _side_process(side: str, organization_id: int, count: int, barrier: Any, results: Any) -> None:
    """One side in its own process (--together): ready, wait for the other, then the bulk start."""
    app = make_app()
    user, ids = user_of(organization_id), transaction_ids(organization_id, count)
    barrier.wait()
    results.put((side, bulk_start(app, organization_id, user, ids)))


def together(orgs: dict[str, int], count: int) -> dict[str, Any]:
    """Both sides at once, each in its own process: the same minutes of a shared machine for both."""
    import multiprocessing

    # fork: the child needs nothing of the parent but its arguments, and builds its own app and engine.
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(len(orgs)), context.Queue()
    processes = [
        context.Process(target=_side_process, args=(side, organization_id, count, barrier, results))
        for side, organization_id in orgs.items()
    ]
    for process in processes:
        process.start()
    found: dict[str, Any] = {}
    while len(found) < len(processes):
        try:
            side, figures = results.get(timeout=5)
        except queue.Empty:
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if dead:  # a side died (its traceback is above): the other would wait at the barrier for ever
                for process in processes:
                    process.kill()
                raise SystemExit(f"a side's process exited with {dead[0]}") from None
            continue
        found[side] = figures
    for process in processes:
        process.join()
    return found


def overlap_ratio(orgs: dict[str, int], sides: dict[str, Any]) -> tuple[float, float]:
    """(rules / plain time per start, seconds) while both sides ran: the faster's finish frees the machine.

    Counted from the attempts' own start times between the later start and the earlier end.
    """
    began = max(figures["began_at"] for figures in sides.values())
    ended = min(figures["ended_at"] for figures in sides.values())
    counts = {}
    with common.raw_connection() as conn:
        for side, organization_id in orgs.items():
            counts[side] = conn.execute(
                "SELECT count(*) FROM recovery_attempt WHERE organization_id = %s"
                " AND created_at BETWEEN %s AND %s",
                (organization_id, began, ended),
            ).fetchone()[0]  # type: ignore[index]
    return counts["plain"] / max(1, counts["rules"]), (ended - began).total_seconds()


def user_of(organization_id: int) -> int:
    with common.raw_connection() as conn:
        return int(
            conn.execute(
                'SELECT min(id) FROM "user" WHERE organization_id = %s', (organization_id,)
            ).fetchone()[0]  # type: ignore[index]
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=ROWS, help=f"recoveries per side (default {ROWS:,})")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--side", choices=SIDES, action="append", help="measure only this side (repeatable)")
    parser.add_argument(
        "--together", action="store_true", help="run both sides at once, each in its own process"
    )
    args = parser.parse_args()
    if not 0 < args.count <= ROWS:
        parser.error(f"--count must be between 1 and {ROWS:,}")

    common.ensure_database()
    app = make_app()
    common.ensure_schema(app)
    orgs = {
        "rules": common.ensure_org_and_user(app, *WITH_RULES),
        "plain": common.ensure_org_and_user(app, *WITHOUT_RULES),
    }
    install_rules(orgs["rules"], RULES, all_start=True)
    remove_rules(orgs["plain"])
    for organization_id in orgs.values():
        seed(organization_id)
    sides = args.side or list(SIDES)
    busy = common.idle_check()
    print(f"{args.count:,} recoveries a side, {args.rounds} rounds; sides: {', '.join(sides)}", flush=True)
    results: list[dict[str, Any]] = []
    for number in range(1, args.rounds + 1):
        one: dict[str, Any] = {}
        order = sides if number % 2 else list(reversed(sides))
        if args.together:
            for side in order:
                reset(orgs[side])
            one = together({side: orgs[side] for side in order}, args.count)
        for side in order:
            organization_id = orgs[side]
            if not args.together:
                reset(organization_id)
                ids = transaction_ids(organization_id, args.count)
                one[side] = bulk_start(app, organization_id, user_of(organization_id), ids)
            figures = one[side]
            print(
                f"round {number} {side:<5} {figures['seconds']:7.1f} s {figures['per_s']:7.0f} starts/s"
                f"  started {figures['started']:,} refused {figures['refused']:,} {figures['refusals']}",
                flush=True,
            )
            if side == "rules":
                unnamed = figures["by_rule"].get("(none)", 0)
                if unnamed:
                    print(f"  warning: {unnamed:,} attempts name no rule: the bulk start ignored the rules")
                print(f"  winners: {figures['by_rule']}")
        if "rules" in one and "plain" in one:
            one["ratio"] = one["rules"]["seconds"] / one["plain"]["seconds"]
            print(f"round {number} with rules / without: {one['ratio']:.3f} (target <= {TARGET})", flush=True)
            if args.together:
                one["overlap_ratio"], overlap = overlap_ratio(orgs, {s: one[s] for s in SIDES})
                print(f"  while both ran ({overlap:.0f} s): {one['overlap_ratio']:.3f}", flush=True)
        results.append(one)
    print(f"{'':<6} {'seconds min / median / max':>30} {'starts/s median':>16}")
    for side in sides:
        seconds = [r[side]["seconds"] for r in results]
        rates = [r[side]["per_s"] for r in results]
        print(f"{side:<6} {min(seconds):9.1f} / {statistics.median(seconds):.1f} / {max(seconds):.1f}"
              f" {statistics.median(rates):16.0f}")  # fmt: skip
    ratios = [r["ratio"] for r in results if "ratio" in r]
    if ratios:
        low, middle, high = min(ratios), statistics.median(ratios), max(ratios)
        print(f"ratio  {low:.3f} / {middle:.3f} / {high:.3f} (target <= {TARGET})")
    written = common.write_json(
        "bulk_start_rules",
        {
            "count": args.count,
            "rules": len(RULES),
            "together": args.together,
            "busy_before_pct": round(busy),
            "rounds": results,
        },
    )
    print(f"written {written.relative_to(common.ROOT)}")


if __name__ == "__main__":
    main()
