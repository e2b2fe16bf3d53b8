"""Benchmark: the rules preview over 1,000,000 failures of the last 90 days, against one GROUP BY.

    .venv/bin/python -m bench.rules_preview            # --rounds 7; seeds once (~1 min)
    .venv/bin/python -m bench.rules_preview --explain  # and EXPLAIN ANALYZE of the preview's SQL

Issue 18: "Preview over 1,000,000 transactions with 20 rules: at most 3x the
time of one `SELECT currency, count(*), sum(amount) ... GROUP BY currency`
over the same 90 days in the same run."

1. Seeds (once; `--reset` again) the `bench-rules` organization with
   1,000,000 failures spread over the last 90 days and 100,000 older ones, by
   COPY: varied currency, amount, country, decline code (every code Stripe
   lists, none, and an undocumented one), source, metadata, email and phone.
   VACUUM ANALYZE. Gives it 20 rules (`RULES`: every kind of condition and
   action, the default last).
2. Rounds, interleaved: the app's `recovery.rules.preview.preview(session,
   organization_id, rules=None, now=...)` and the floor, the brief's GROUP BY
   through the same session, each timed client side in its own transaction;
   the order flips every round, so a busy moment of the shared machine lands
   on both. One warm-up of each first (the table in the buffer cache).
3. Prints each round's times and ratio, then min/median/max of each side and
   of the ratio. With `--explain`, or when the median ratio is above the
   target, runs EXPLAIN (ANALYZE, BUFFERS) of the slowest statement the preview
   sent, and of the floor. JSON in bench/out/rules_preview-*.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench import common
from recovery.declines import CODE_CATEGORY

ORG = ("bench-rules", "Bench Rules", "owner@bench-rules.example")
RECENT = 1_000_000  # failures of the last 90 days: what the preview and the floor read
OLDER = 100_000  # failures before that: the index must skip them
WINDOW = timedelta(days=90)
TARGET = 3.0
FLOOR_SQL = (
    "SELECT currency, count(*), sum(amount) FROM transaction"
    " WHERE organization_id = :o AND failed_at >= :since GROUP BY currency"
)

# currency, its countries, weight
MARKETS = [
    ("usd", ("US", "US", "US", "MX", "PR", "CA"), 40),
    ("eur", ("DE", "FR", "ES", "IT", "NL", "IE", "BE", "AT"), 25),
    ("gbp", ("GB", "GB", "GB", "IE"), 15),
    ("jpy", ("JP",), 6),
    ("cad", ("CA",), 5),
    ("aud", ("AU", "NZ"), 4),
    ("chf", ("CH",), 2),
    ("brl", ("BR",), 2),
    ("bhd", ("BH",), 1),
]
# Every code Stripe lists (insufficient_funds and generic_decline most often, as in life),
# no code at all, and one Stripe does not document (category unknown).
CODES: list[str | None] = [*sorted(CODE_CATEGORY)]
CODE_WEIGHTS = [
    {"insufficient_funds": 30, "generic_decline": 20, "do_not_honor": 10, "expired_card": 8}.get(c or "", 1)
    for c in CODES
]
CODES += [None, "weird_new_code"]
CODE_WEIGHTS += [6, 1]
SOURCES = ["stripe", "csv", "api", "form"]
SOURCE_WEIGHTS = [60, 20, 15, 5]
PLANS = ["basic", "pro", "enterprise"]
COLUMNS = (
    "organization_id",
    "transaction_ref",
    "amount",
    "currency",
    "status",
    "failure_code",
    "customer_name",
    "customer_email",
    "customer_phone",
    "customer_country",
    "customer_locale",
    "metadata",
    "source",
    "failed_at",
    "created_at",
    "updated_at",
)


# --- data ----------------------------------------------------------------------------


def rows(
    organization_id: int,
    count: int,
    now: datetime,
    *,
    prefix: str = "RULE",
    newest: timedelta = timedelta(0),
    span: timedelta = WINDOW,
    reachable: bool = False,
    seed: int = 18,
) -> Iterator[tuple[Any, ...]]:
    """`count` failed transactions, failed between `now - newest - span` and `now - newest`.

    Deterministic for a seed. `reachable`: every customer has an email (a bulk
    start refuses the rest, which would make the run cheaper than starting).
    """
    rng = random.Random(seed)
    markets = rng.choices(MARKETS, weights=[m[2] for m in MARKETS], k=count)
    codes = rng.choices(CODES, weights=CODE_WEIGHTS, k=count)
    sources = rng.choices(SOURCES, weights=SOURCE_WEIGHTS, k=count)
    for i in range(count):
        currency, countries, _ = markets[i]
        # Log-uniform: $1 to $5,000 (in minor units; the dinar has three decimals), many small, few large.
        amount = int(10 ** rng.uniform(2, 5.7)) * (10 if currency == "bhd" else 1)
        failed_at = now - newest - span * rng.random()
        customer = rng.randrange(400_000)
        has_email = reachable or rng.random() < 0.9
        has_phone = rng.random() < 0.6
        meta: dict[str, str] = {}
        if rng.random() < 0.8:
            meta["plan"] = PLANS[customer % 3]
        if rng.random() < 0.3:
            meta["channel"] = "app" if customer % 2 else "web"
        yield (
            organization_id,
            f"{prefix}-{i:07d}",
            max(amount, 100),
            currency,
            "failed",
            codes[i],
            f"Customer {customer}",
            f"customer{customer:06d}@example.com" if has_email else None,
            f"+447700{customer:06d}" if has_phone else None,
            rng.choice(countries) if rng.random() < 0.97 else None,
            "en-US",
            json.dumps(meta),
            sources[i],
            failed_at,
            failed_at,
            failed_at,
        )


def copy_rows(conn: Any, batch: Iterator[tuple[Any, ...]]) -> int:
    """COPY the rows in; how many."""
    count = 0
    with conn.cursor() as cursor, cursor.copy(f"COPY transaction ({', '.join(COLUMNS)}) FROM STDIN") as copy:
        for row in batch:
            copy.write_row(row)
            count += 1
    return count


def seed(organization_id: int, reset: bool) -> None:
    """The organization's 1,100,000 failures, once (again with `reset`)."""
    with common.raw_connection() as conn:
        if reset:
            conn.execute("DELETE FROM transaction WHERE organization_id = %s", (organization_id,))
        have = conn.execute(
            "SELECT count(*) FROM transaction WHERE organization_id = %s", (organization_id,)
        ).fetchone()[0]  # type: ignore[index]
        if have == RECENT + OLDER:
            return
        if have:
            raise SystemExit(f"{have:,} rows already there, not {RECENT + OLDER:,}: run with --reset.")
        began = time.perf_counter()
        now = datetime.now(UTC)
        copy_rows(conn, rows(organization_id, RECENT, now, newest=timedelta(minutes=10)))
        # Older ones: 90 days to two years ago.
        old = rows(organization_id, OLDER, now, prefix="OLD", newest=WINDOW + timedelta(days=1),
                   span=timedelta(days=640), seed=19)  # fmt: skip
        copy_rows(conn, old)
        conn.commit()
        loaded = time.perf_counter() - began
    with common.raw_connection(autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) transaction")
    print(f"seeded {RECENT + OLDER:,} transactions in {loaded:.0f} s (then VACUUM ANALYZE)", flush=True)


# --- the rules -------------------------------------------------------------------------

# 19 rules and the default: every kind of condition, several on some rules, every action.
# The campaigns are the built-in ones (recovery/campaigns/builtin.py), by key.
RULES: list[dict[str, Any]] = [
    {"name": "Fraud: do not contact", "action": "do_not_recover",
     "reason": "Lost, stolen or fraud.",
     "conditions": [{"type": "decline_category_in", "values": ["do_not_contact"]}]},
    {"name": "Large USD: hold", "action": "hold_for_review", "reason": "Over $2,000.",
     "conditions": [{"type": "amount", "currency": "usd", "min": 200_000, "max": None}]},
    {"name": "Large EUR: hold", "action": "hold_for_review", "reason": "Over €2,000.",
     "conditions": [{"type": "amount", "currency": "eur", "min": 200_000, "max": None}]},
    {"name": "Enterprise, soft decline", "campaign": "soft_decline",
     "conditions": [{"type": "metadata_equals", "key": "plan", "value": "enterprise"},
                    {"type": "decline_category_in", "values": ["retry_later"]}]},
    {"name": "Mexico: no SMS campaign", "campaign": "customer_action",
     "conditions": [{"type": "country_in", "values": ["MX", "BR"]}, {"type": "has_phone", "value": False}]},
    {"name": "Expired cards from CSV", "campaign": "customer_action",
     "conditions": [{"type": "decline_code_in", "values": ["expired_card", "incorrect_number"]},
                    {"type": "source_in", "values": ["csv"]}]},
    {"name": "Small GBP: messages", "campaign": "customer_action",
     "conditions": [{"type": "amount", "currency": "gbp", "min": None, "max": 500}]},
    {"name": "Yen mid-size", "campaign": "default",
     "conditions": [{"type": "currency_in", "values": ["jpy"]},
                    {"type": "amount", "currency": "jpy", "min": 10_000, "max": 300_000}]},
    {"name": "No email, no phone: hold", "action": "hold_for_review", "reason": "Nobody to write to.",
     "conditions": [{"type": "has_email", "value": False}, {"type": "has_phone", "value": False}]},
    {"name": "Recent insufficient funds, Stripe", "campaign": "soft_decline",
     "conditions": [{"type": "decline_code_in", "values": ["insufficient_funds"]},
                    {"type": "failed_within_days", "days": 3},
                    {"type": "source_in", "values": ["stripe"]}]},
    {"name": "Outside Europe and North America", "campaign": "default",
     "conditions": [{"type": "country_not_in", "values": ["US", "CA", "GB", "DE", "FR", "ES", "IT", "NL",
                                                          "IE", "BE", "AT", "CH"]},
                    {"type": "currency_in", "values": ["usd", "eur", "aud"]}]},
    {"name": "App orders: authentication", "campaign": "customer_action",
     "conditions": [{"type": "metadata_equals", "key": "channel", "value": "app"},
                    {"type": "decline_code_in", "values": ["authentication_required", "incorrect_cvc"]}]},
    {"name": "Form payments", "campaign": "default",
     "conditions": [{"type": "source_in", "values": ["form"]},
                    {"type": "amount", "currency": "usd", "min": 1_000, "max": 50_000}]},
    {"name": "Swiss francs", "campaign": "soft_decline",
     "conditions": [{"type": "currency_in", "values": ["chf"]}, {"type": "has_email", "value": True}]},
    {"name": "API unknown codes", "action": "hold_for_review", "reason": "Unknown decline from the API.",
     "conditions": [{"type": "source_in", "values": ["api"]},
                    {"type": "decline_category_in", "values": ["unknown"]}]},
    {"name": "Pro plan retries", "campaign": "soft_decline",
     "conditions": [{"type": "metadata_equals", "key": "plan", "value": "pro"},
                    {"type": "decline_category_in", "values": ["retry_later"]},
                    {"type": "failed_within_days", "days": 30}]},
    {"name": "Mid-size EUR, customer action", "campaign": "customer_action",
     "conditions": [{"type": "amount", "currency": "eur", "min": 5_000, "max": 100_000},
                    {"type": "decline_category_in", "values": ["customer_action"]}]},
    {"name": "Australia and New Zealand", "campaign": "default", "enabled": False,
     "conditions": [{"type": "country_in", "values": ["AU", "NZ"]}]},
    {"name": "Soft declines", "campaign": "soft_decline",
     "conditions": [{"type": "decline_category_in", "values": ["retry_later"]},
                    {"type": "has_email", "value": True}]},
    {"name": "Everything else", "campaign": "default", "default": True, "conditions": []},
]  # fmt: skip


def install_rules(organization_id: int, rules: Sequence[dict[str, Any]], *, all_start: bool = False) -> None:
    """Replace the organization's rules with `rules`, in order (the last is the default).

    `all_start`: every rule starts a campaign (do-not-recover and hold rules start the
    default campaign instead), so every start of a bulk start creates a recovery.
    """
    with common.raw_connection() as conn:
        campaigns = dict(
            conn.execute(  # type: ignore[arg-type]
                "SELECT builtin, id FROM campaign WHERE organization_id = %s AND builtin IS NOT NULL",
                (organization_id,),
            ).fetchall()
        )
        if not campaigns:
            raise SystemExit("the organization has no built-in campaigns (create_organization installs them)")
        conn.execute("DELETE FROM recovery_rule WHERE organization_id = %s", (organization_id,))
        for position, rule in enumerate(rules):
            action = rule.get("action", "start_campaign")
            campaign = rule.get("campaign")
            if all_start and action != "start_campaign":
                action, campaign = "start_campaign", "default"
            conn.execute(
                "INSERT INTO recovery_rule (organization_id, position, name, enabled, is_default, conditions,"
                " action, campaign_id, reason, version, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 1, now(), now())",
                (
                    organization_id,
                    position,
                    rule["name"],
                    rule.get("enabled", True),
                    rule.get("default", False),
                    json.dumps(rule["conditions"]),
                    action,
                    campaigns[campaign] if campaign else None,
                    None if action == "start_campaign" else rule.get("reason"),
                ),
            )
        conn.execute(
            "UPDATE organization SET rules_version = rules_version + 1 WHERE id = %s", (organization_id,)
        )
        conn.commit()


# --- the run ---------------------------------------------------------------------------


def timed(fn: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    result = fn()
    return (time.perf_counter() - began) * 1000, result


class Statements:
    """The SQL a block of code sends, with its parameters and its time (for EXPLAIN)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.seen: list[tuple[float, str, Any]] = []
        self._began = 0.0

    def __enter__(self) -> Statements:
        sa.event.listen(self.engine, "before_cursor_execute", self._before)
        sa.event.listen(self.engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._before)
        sa.event.remove(self.engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        self._began = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        self.seen.append(((time.perf_counter() - self._began) * 1000, statement, parameters))


def explain(app: Any, organization_id: int, preview: Any, since: datetime) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the slowest statement the preview sends, and of the floor."""
    from recovery.extensions import db

    lines = []
    with app.app_context():
        with Statements(db.engine) as statements:
            preview(db.session, organization_id, None, now=datetime.now(UTC))
        db.session.rollback()
        ms, statement, parameters = max(statements.seen, key=lambda s: s[0])
        lines.append(f"-- the preview sent {len(statements.seen)} statements; the slowest ({ms:.0f} ms):")
        lines.append(statement)
        with db.engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            plan = raw.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).fetchall()
            lines += ["-- its plan:", *(row[0] for row in plan)]
            plan = conn.execute(
                sa.text("EXPLAIN (ANALYZE, BUFFERS) " + FLOOR_SQL), {"o": organization_id, "since": since}
            ).fetchall()
            lines += ["-- the floor's plan:", *(row[0] for row in plan)]
    return lines


def spread(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--reset", action="store_true", help="seed the organization's rows again")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the preview's SQL")
    parser.add_argument("--floor-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    common.ensure_database()
    app = common.make_app()
    common.ensure_schema(app)
    organization_id = common.ensure_org_and_user(app, *ORG)
    seed(organization_id, args.reset)
    install_rules(organization_id, RULES)
    preview = None if args.floor_only else common.first_of("recovery.rules.preview:preview")
    busy = common.idle_check()

    from recovery.extensions import db

    results: list[dict[str, float]] = []
    with app.app_context():

        def app_side() -> Any:
            try:
                return preview(db.session, organization_id, None, now=datetime.now(UTC))  # type: ignore[misc]
            finally:
                db.session.rollback()

        def floor_side() -> Any:
            since = datetime.now(UTC) - WINDOW
            try:
                return db.session.execute(sa.text(FLOOR_SQL), {"o": organization_id, "since": since}).all()
            finally:
                db.session.rollback()

        sides = {"floor": floor_side} if preview is None else {"app": app_side, "floor": floor_side}
        for fn in sides.values():  # warm-up: the table in the cache, the statements prepared
            fn()
        _, floor_rows = timed(floor_side)
        print(f"floor: {sum(r[1] for r in floor_rows):,} rows in 90 days, {len(floor_rows)} currencies")
        print(f"{'round':>5} {'app ms':>9} {'floor ms':>9} {'app/floor':>9}", flush=True)
        for number in range(1, args.rounds + 1):
            order = list(sides) if number % 2 else list(reversed(sides))
            one = {side: timed(sides[side])[0] for side in order}
            if "app" in one:
                one["ratio"] = one["app"] / one["floor"]
            results.append(one)
            print(
                f"{number:>5} {one.get('app', float('nan')):>9.1f} {one['floor']:>9.1f}"
                f" {one.get('ratio', float('nan')):>9.2f}",
                flush=True,
            )
    print(f"{'':>5} {'min / median / max':>30}")
    for side in ("app", "floor", "ratio"):
        values = [r[side] for r in results if side in r]
        if values:
            print(f"{side:>5} {spread(values):>30}" + (f"   (target <= {TARGET})" if side == "ratio" else ""))
    ratios = [r["ratio"] for r in results if "ratio" in r]
    plan: list[str] = []
    if preview is not None and (args.explain or (ratios and statistics.median(ratios) > TARGET)):
        plan = explain(app, organization_id, preview, datetime.now(UTC) - WINDOW)
        print("\n".join(plan))
    written = common.write_json(
        "rules_preview",
        {"rows_90_days": RECENT, "older": OLDER, "rules": len(RULES), "busy_before_pct": round(busy),
         "rounds": results, "plan": plan},
    )  # fmt: skip
    print(f"written {written.relative_to(common.ROOT)}")


if __name__ == "__main__":
    main()
