"""KPI tiles on the transactions list: the figures, their definitions, scoping, caching and query plans."""

from __future__ import annotations

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
from recovery.recoveries import services
from recovery.transactions import kpis

S = TransactionStatus
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MONTH = datetime(2026, 11, 1, tzinfo=UTC)


def started(db: Any, transaction: Transaction, **values: Any) -> RecoveryAttempt:
    attempt = services.start_recovery(
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


def test_recovery_rate_counts_what_went_into_recovery(db, make_org, make_transaction):
    org = make_org()
    recent = NOW - timedelta(days=3)
    for _ in range(3):
        make_transaction(org, status=S.RECOVERED, failed_at=recent, recovered_at=NOW)
    make_transaction(org, status=S.UNRECOVERED, failed_at=recent)
    make_transaction(org, status=S.RECOVERING, failed_at=recent)
    # Failed, with an attempt that ended without moving it: in the denominator.
    stuck = make_transaction(org, failed_at=recent)
    attempt = started(db, stuck, status=AttemptStatus.FAILED, next_send_at=None)
    db.session.get(Transaction, stuck.id).status = S.FAILED
    db.session.commit()
    assert attempt.status == AttemptStatus.FAILED
    # Never sent to recovery, cancelled by staff, failed before the window, or another org's: out.
    make_transaction(org, failed_at=recent)
    make_transaction(org, status=S.CANCELLED, failed_at=recent)
    make_transaction(org, status=S.RECOVERED, failed_at=NOW - timedelta(days=31), recovered_at=NOW)
    make_transaction(make_org(), status=S.UNRECOVERED, failed_at=recent)

    figures = kpis.compute(db.session, org.id, "UTC", NOW)

    assert (figures.rate_recovered, figures.rate_total) == (3, 6)
    assert figures.rate == pytest.approx(0.5)


def test_no_recovery_yet_has_no_rate(db, make_org):
    figures = kpis.compute(db.session, make_org().id, "UTC", NOW)

    assert figures.rate is None and figures.recovered == [] and figures.in_flight == 0


def test_attempts_in_flight_and_messages_sent_this_month(db, make_org, make_transaction):
    org = make_org()
    running = [started(db, make_transaction(org)) for _ in range(2)]
    clicked = started(db, make_transaction(org), status=AttemptStatus.CLICKED)
    done = started(db, make_transaction(org))
    services.cancel_recovery(db.session, done, Actor.system(org.id), now=utcnow())
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
    make_transaction(org, status=S.UNRECOVERED, failed_at=now)
    started(db, make_transaction(org))
    recovered(make_transaction, make_org(), now, amount=424242, currency="usd")  # not ours

    response = client.get("/transactions/kpis", headers={"HX-Request": "true"})

    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" not in html
    assert f"Recovered in {now:%B %Y}" in html
    assert "$50.00" in html and "¥5,000" in html and "4,242.42" not in html
    assert "50%" in html  # 2 recovered of 4: two recovered, one unrecovered, one recovering
    assert "2 of 4 sent to recovery" in html
    assert 'title="' + kpis.RATE_DEFINITION.replace("'", "&#39;") in html
    assert "recovered ÷ (recovered + unrecovered + recovering + failed with a recovery attempt)" in html
    assert '<p class="kpi-value">1</p>' in html  # in flight


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
        assert len(queries) == 5, queries
        for statement, parameters in queries:
            plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
            assert "Seq Scan" not in plan, f"{statement}\n{plan}"
            assert "Index" in plan, plan
