"""KPI tiles on the transactions list: the figures, their definitions, scoping, caching and query plans."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from redis import Redis

from recovery.audit import Actor
from recovery.models import (
    AttemptStatus,
    Message,
    MessageStatus,
    Organization,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.queue import redis_connection
from recovery.recoveries import lifecycle
from recovery.transactions import kpis

S = TransactionStatus
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MONTH = datetime(2026, 11, 1, tzinfo=UTC)


def started(db: Any, transaction: Transaction, **values: Any) -> RecoveryAttempt:
    attempt = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id), now=utcnow()
    ).attempt
    for name, value in values.items():
        setattr(attempt, name, value)
    db.session.commit()
    return attempt


def recovered(make_transaction: Any, org: Organization, at: datetime, **values: Any) -> Transaction:
    return make_transaction(
        org, status=S.RECOVERED, recovered_at=at, failed_at=at - timedelta(days=2), **values
    )


def message(db: Any, attempt: RecoveryAttempt, status: str, sent_at: datetime | None, step: int) -> None:
    db.session.add(
        Message(
            organization_id=attempt.organization_id,
            attempt_id=attempt.id,
            transaction_id=attempt.transaction_id,
            step=step,
            channel="email",
            recipient="a@example.com",
            status=status,
            sent_at=sent_at,
        )
    )
    db.session.commit()


@pytest.mark.parametrize(
    ("now", "timezone", "start"),
    [
        (NOW, "UTC", MONTH),
        # 1 March 02:00 UTC is still February in New York: February started at 05:00 UTC.
        (datetime(2026, 3, 1, 2, 0, tzinfo=UTC), "America/New_York", datetime(2026, 2, 1, 5, 0, tzinfo=UTC)),
        # 31 October 23:30 UTC is already November in Tokyo.
        (datetime(2026, 10, 31, 23, 30, tzinfo=UTC), "Asia/Tokyo", datetime(2026, 10, 31, 15, 0, tzinfo=UTC)),
        (NOW, "Not/AZone", MONTH),
    ],
)
def test_the_month_starts_in_the_organizations_time_zone(now, timezone, start):
    assert kpis.month_start(now, timezone) == start


def test_recovered_this_month_per_currency(db, make_org, make_transaction):
    org = make_org()
    recovered(make_transaction, org, NOW - timedelta(days=1), amount=5000, currency="usd")
    # What Stripe says was paid counts, when it is known.
    recovered(make_transaction, org, MONTH, amount=2000, currency="usd", recovered_amount=2500)
    recovered(make_transaction, org, NOW, amount=5000, currency="jpy")
    # Not this month, not recovered (any more), or not ours: left out.
    recovered(make_transaction, org, MONTH - timedelta(seconds=1), amount=999, currency="usd")
    make_transaction(org, status=S.REFUNDED, recovered_at=NOW, amount=777, currency="usd")
    make_transaction(org, status=S.RECOVERING, amount=111, currency="eur")
    recovered(make_transaction, make_org(), NOW, amount=123, currency="usd")

    figures = kpis.compute(db.session, org.id, "UTC", NOW)

    assert figures.recovered == [("usd", 7500), ("jpy", 5000)]
    assert figures.month_start == MONTH


def ended(db: Any, transaction: Transaction, status: str, at: datetime) -> RecoveryAttempt:
    """An attempt of the transaction that reached `status` at `at`."""
    attempt = started(db, transaction)
    if status == AttemptStatus.CANCELLED:
        lifecycle.cancel_recovery(db.session, attempt, Actor.system(transaction.organization_id), now=at)
    else:
        attempt.transition(status)
        attempt.ended_at = at
    db.session.commit()
    return attempt


def test_recovery_rate_is_recovered_over_finished_recoveries(db, make_org, make_transaction):
    org = make_org()
    recent = NOW - timedelta(days=3)
    for _ in range(3):
        ended(db, make_transaction(org), AttemptStatus.COMPLETED, recent)
    ended(db, make_transaction(org), AttemptStatus.EXHAUSTED, recent)
    ended(db, make_transaction(org), AttemptStatus.EXPIRED, NOW - timedelta(days=29))
    ended(db, make_transaction(org), AttemptStatus.CANCELLED, recent)
    # Still running (in progress, shown apart), reached nobody (failed), ended before the
    # window, or another organization's: not in the rate.
    started(db, make_transaction(org))
    started(db, make_transaction(org), status=AttemptStatus.CLICKED)
    ended(db, make_transaction(org), AttemptStatus.FAILED, recent)
    ended(db, make_transaction(org), AttemptStatus.COMPLETED, NOW - timedelta(days=31))
    ended(db, make_transaction(make_org()), AttemptStatus.EXHAUSTED, recent)

    figures = kpis.compute(db.session, org.id, "UTC", NOW)

    assert (figures.rate_recovered, figures.rate_ran_out, figures.rate_cancelled) == (3, 2, 1)
    assert figures.rate_finished == 6 and figures.rate == pytest.approx(0.5)
    assert figures.in_flight == 2


def test_a_recovery_still_running_does_not_lower_the_rate(db, make_org, make_transaction):
    """The old figure divided by every started recovery: starting more made the rate fall."""
    org = make_org()
    ended(db, make_transaction(org), AttemptStatus.COMPLETED, NOW - timedelta(days=1))
    for _ in range(3):
        started(db, make_transaction(org))

    figures = kpis.compute(db.session, org.id, "UTC", NOW)

    assert figures.rate == 1.0 and figures.in_flight == 3


def test_a_late_payment_counts_when_it_came(db, make_org, make_transaction):
    """An attempt paid after it ran out moves from "ran out" to "recovered", dated by the payment."""
    org = make_org()
    attempt = ended(db, make_transaction(org), AttemptStatus.EXPIRED, NOW - timedelta(days=40))
    attempt.transition(AttemptStatus.COMPLETED)
    db.session.commit()

    figures = kpis.compute(db.session, org.id, "UTC", utcnow())

    assert (figures.rate_recovered, figures.rate_ran_out) == (1, 0)


def test_no_recovery_yet_has_no_rate(db, make_org):
    figures = kpis.compute(db.session, make_org().id, "UTC", NOW)

    assert figures.computed_at == NOW
    assert figures.rate is None and figures.recovered == [] and figures.in_flight == 0


def test_attempts_in_flight_and_messages_sent_this_month(db, make_org, make_transaction):
    org = make_org()
    running = [started(db, make_transaction(org)) for _ in range(2)]
    clicked = started(db, make_transaction(org), status=AttemptStatus.CLICKED)
    done = started(db, make_transaction(org))
    lifecycle.cancel_recovery(db.session, done, Actor.system(org.id), now=utcnow())
    db.session.commit()
    started(db, make_transaction(make_org()))  # another organization's

    message(db, running[0], MessageStatus.SENT, NOW - timedelta(days=1), 0)
    message(db, running[1], MessageStatus.DELIVERED, MONTH, 0)
    message(db, clicked, MessageStatus.SENT, MONTH - timedelta(seconds=1), 0)  # last month
    message(db, running[0], MessageStatus.FAILED, None, 1)  # never left
    message(db, running[1], MessageStatus.UNDELIVERABLE, NOW, 1)

    figures = kpis.compute(db.session, org.id, "UTC", NOW)

    assert figures.in_flight == 3
    assert figures.messages_sent == 2


def test_the_list_page_loads_the_tiles_after_itself(client: FlaskClient, signed_in):
    signed_in("viewer")

    page = client.get("/transactions").get_data(as_text=True)

    assert 'id="kpis"' in page and 'hx-get="/transactions/kpis"' in page and 'hx-trigger="load"' in page
    assert "Recovery rate" not in page  # not computed for the page itself


def test_the_tiles_show_the_figures_formatted(client: FlaskClient, db, signed_in, make_org, make_transaction):
    org = make_org(timezone="UTC")
    signed_in("viewer", org=org)
    now = utcnow()
    make_transaction(org, status=S.RECOVERED, amount=5000, currency="usd", recovered_at=now, failed_at=now)
    make_transaction(org, status=S.RECOVERED, amount=5000, currency="jpy", recovered_at=now, failed_at=now)
    ended(db, make_transaction(org), AttemptStatus.COMPLETED, now)
    ended(db, make_transaction(org), AttemptStatus.EXHAUSTED, now)
    ended(db, make_transaction(org), AttemptStatus.CANCELLED, now)
    started(db, make_transaction(org))
    recovered(make_transaction, make_org(), now, amount=424242, currency="usd")  # not ours

    response = client.get("/transactions/kpis", headers={"HX-Request": "true"})

    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" not in html
    assert f"Recovered in {now:%B %Y}" in html
    assert "$50.00" in html and "¥5,000" in html and "4,242.42" not in html
    assert "Recovery rate, last 30 days" in html
    assert "33%" in html  # 1 recovered of 3 ended: one ran out, one cancelled
    assert (
        "1 recovered of 3 recoveries that ended (1 ran out, 1 cancelled); 1 still in progress, not counted."
        in html
    )
    assert 'title="' + kpis.RATE_DEFINITION.replace("'", "&#39;") in html
    assert "recovered ÷ (recovered + ran out + cancelled)" in html
    assert '<p class="kpi-value">1</p>' in html  # in progress


def test_the_tiles_say_when_the_figures_were_computed(
    client: FlaskClient, db, app, signed_in, make_org, make_transaction
):
    """A cached figure shows the time it was computed, not the time the tile is shown."""
    org = make_org()
    signed_in("viewer", org=org)
    computed = datetime(2026, 12, 7, 9, 41, 30, tzinfo=UTC)
    redis = redis_connection(app)
    kpis.cached(db.session, redis, org.id, org.timezone, computed)
    # A month start that matches the cache entry, so that the tile reuses it now.
    stored = kpis.Kpis.from_json(redis.get(kpis.cache_key(org.id)))
    redis.set(
        kpis.cache_key(org.id),
        kpis.Kpis(
            month_start=kpis.month_start(utcnow(), org.timezone), computed_at=stored.computed_at
        ).to_json(),
        ex=kpis.CACHE_SECONDS,
    )

    html = client.get("/transactions/kpis").get_data(as_text=True)

    assert 'As of <time datetime="2026-12-07T09:41:30+00:00">09:41 UTC</time>' in html
    # Computed afresh, it says so with the time of that computation.
    redis.delete(kpis.cache_key(org.id))
    before = utcnow().replace(second=0, microsecond=0)
    fresh = client.get("/transactions/kpis").get_data(as_text=True)
    shown = datetime.fromisoformat(fresh.split('As of <time datetime="', 1)[1].split('"', 1)[0])
    assert before <= shown <= utcnow()


def test_an_entry_cached_by_the_older_release_is_recomputed(db, app, make_org):
    org = make_org()
    redis = redis_connection(app)
    old = {
        "month_start": kpis.month_start(NOW, "UTC").isoformat(),
        "recovered": [],
        "rate_recovered": 1,
        "rate_total": 9,
        "in_flight": 0,
        "messages_sent": 0,
    }
    redis.set(kpis.cache_key(org.id), json.dumps(old), ex=60)

    figures = kpis.cached(db.session, redis, org.id, "UTC", NOW)

    assert figures.computed_at == NOW and figures.rate is None


def test_the_figures_are_cached_for_a_minute(
    client: FlaskClient, db, app, signed_in, make_org, make_transaction
):
    org = make_org()
    signed_in("viewer", org=org)
    assert "—" in client.get("/transactions/kpis").get_data(as_text=True)
    now = utcnow()
    make_transaction(org, status=S.RECOVERED, amount=5000, currency="usd", recovered_at=now, failed_at=now)

    assert "$50.00" not in client.get("/transactions/kpis").get_data(as_text=True)
    redis = redis_connection(app)
    assert 0 < redis.ttl(kpis.cache_key(org.id)) <= kpis.CACHE_SECONDS
    redis.delete(kpis.cache_key(org.id))
    assert "$50.00" in client.get("/transactions/kpis").get_data(as_text=True)


def test_without_redis_the_figures_are_computed(db, make_org, make_transaction):
    org = make_org()
    recovered(make_transaction, org, NOW, amount=5000, currency="usd")
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)

    figures = kpis.cached(db.session, down, org.id, "UTC", NOW)

    assert figures.recovered == [("usd", 5000)]


def test_a_cached_month_that_ended_is_not_reused(db, app, make_org, make_transaction):
    org = make_org()
    redis = redis_connection(app)
    kpis.cached(db.session, redis, org.id, "UTC", NOW)
    recovered(make_transaction, org, MONTH + timedelta(days=30, hours=1), amount=5000, currency="usd")

    december = kpis.cached(db.session, redis, org.id, "UTC", MONTH + timedelta(days=30, hours=2))

    assert december.recovered == [("usd", 5000)]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_every_kpi_query_is_served_by_an_index(db, make_org, make_transaction):
    """EXPLAIN on PostgreSQL with sequential scans priced out: each aggregate has an index to use."""
    org = make_org()
    make_transaction(org)
    seen: list[tuple[str, Any]] = []

    def collect(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    with db.engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        sa.event.listen(conn, "before_cursor_execute", collect)
        with sa.orm.Session(bind=conn) as session:
            kpis.compute(session, org.id, "UTC", NOW)
        sa.event.remove(conn, "before_cursor_execute", collect)
        queries = [(q, p) for q, p in seen if "count(" in q or "sum(" in q]
        assert len(queries) == 4, queries
        for statement, parameters in queries:
            plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
            assert "Seq Scan" not in plan, f"{statement}\n{plan}"
            assert "Index" in plan, plan
