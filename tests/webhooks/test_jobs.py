"""The processing job: handler errors recorded, rolled back, retried, replayed; pending events taken along.

Processing runs the real RQ job function (or a real burst worker) on both databases.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import event as sa_event
from sqlalchemy import func, select

from recovery.extensions import db as _db
from recovery.models import (
    AuditEvent,
    Message,
    MessageStatus,
    Organization,
    PaymentFulfilment,
    Transaction,
    TransactionStatus,
    WebhookEvent,
    WebhookState,
    utcnow,
)
from recovery.queue import get_queue
from recovery.webhooks import handlers, jobs
from recovery.webhooks.context import Context
from tests.fixtures import stripe_events as se
from tests.fixtures.webhooks import (
    events,
    queued_ids,
    reload,
    run_job,
    stored,
    timeline_actions,
    txn_of,
)


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_WEBHOOK_RETRY_SECONDS": "0,0"}


# --- handler errors: recorded, rolled back, retried, replayed ---------------------------------------


def test_a_handler_error_is_recorded_rolled_back_retried_then_replayed_from_the_page(
    client, recovering, monkeypatch, rq_worker, signed_in
):
    real = handlers.HANDLERS["checkout.session.completed"]

    def broken(ctx: Context, obj: dict[str, Any]) -> str:
        real(ctx, obj)  # does everything, then fails: all of it must roll back
        raise RuntimeError("the database hiccuped")

    monkeypatch.setitem(handlers.HANDLERS, "checkout.session.completed", broken)
    evt = se.event(
        "checkout.session.completed", se.checkout_session(txn_of(recovering), id=recovering["session_id"])
    )
    assert se.post(client, evt).status_code == 200

    rq_worker()  # the real worker forks with the broken handler; Retry(max=2, interval=0) re-runs it

    row = stored(evt["id"])
    assert row.status == WebhookState.FAILED
    assert row.attempts == 3  # the first run and two retries
    assert row.last_error == "RuntimeError: the database hiccuped"
    assert "Traceback" in row.last_traceback and "broken" in row.last_traceback
    assert row.organization_id == recovering["org_id"]
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
    assert reload(Message, recovering["message_id"]).status == MessageStatus.QUEUED
    assert _db.session.scalar(select(func.count()).select_from(PaymentFulfilment)) == 0
    assert timeline_actions(recovering["txn_id"]) == []

    # Fixed; an admin presses "Process again".
    monkeypatch.setitem(handlers.HANDLERS, "checkout.session.completed", real)
    signed_in("admin", org=reload(Organization, recovering["org_id"]))
    page = client.get(f"/webhooks/{row.id}")
    assert "Process again" in page.get_data(as_text=True)
    assert "the database hiccuped" in page.get_data(as_text=True)
    response = client.post(f"/webhooks/{row.id}/process")
    assert response.status_code == 302
    assert stored(evt["id"]).status == WebhookState.PENDING
    rq_worker()

    row = stored(evt["id"])
    assert row.status == WebhookState.PROCESSED and row.attempts == 4 and row.last_error is None
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERED
    replays = _db.session.scalars(select(AuditEvent).where(AuditEvent.action == "webhook.replayed")).all()
    assert [r.target_id for r in replays] == [evt["id"]]


# --- a job takes the other pending events along -------------------------------------------------


def waiting_ids() -> list[str]:
    """The queue's jobs that still exist: a discarded job's id stays in the list until a worker pops it."""
    return [job.id for job in get_queue().jobs]


def unknown_events(count: int) -> list[dict[str, Any]]:
    return [
        se.event("customer.created", {"id": se.new_id("cus"), "object": "customer"}) for _ in range(count)
    ]


def test_a_batch_loads_the_transactions_its_events_name_in_one_query(client, make_org, make_transaction):
    org = make_org()
    txns = [make_transaction(org) for _ in range(4)]
    _db.session.commit()
    evts = [se.event("payment_intent.payment_failed", se.declined(txn)) for txn in txns]
    for evt in evts:
        assert se.post(client, evt).status_code == 200
    _db.session.remove()  # the job starts with nothing loaded, as a worker does
    statements: list[str] = []
    listen = sa_event.listens_for(_db.engine, "before_cursor_execute")

    @listen
    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.replace('"', "").split()))

    try:
        run_job(jobs.process_webhook_event, evts[0]["id"])
    finally:
        sa_event.remove(_db.engine, "before_cursor_execute", note)

    assert {stored(evt["id"]).status for evt in evts} == {WebhookState.PROCESSED}
    by_id = [s for s in statements if s.startswith("SELECT transaction.") and "WHERE transaction.id =" in s]
    by_ids = [s for s in statements if s.startswith("SELECT transaction.") and "transaction.id IN" in s]
    assert len(by_ids) == 1  # the three taken along, at once
    assert len(by_id) == 1  # the job's own event, before it took the others along


def test_one_job_applies_the_waiting_events_and_removes_their_jobs(client):
    evts = unknown_events(5)
    for evt in evts:
        assert se.post(client, evt).status_code == 200
    assert len(queued_ids()) == 5

    run_job(jobs.process_webhook_event, evts[0]["id"])

    assert [row.status for row in events()] == [WebhookState.IGNORED] * 5
    # Only the job run here by hand is left (RQ takes a job off the queue as it starts it).
    assert waiting_ids() == [jobs.job_id(evts[0]["id"])]


def test_a_real_worker_drains_a_burst_and_skips_the_removed_jobs(client, rq_worker):
    evts = unknown_events(6)
    for evt in evts:
        assert se.post(client, evt).status_code == 200

    rq_worker()

    assert [row.status for row in events()] == [WebhookState.IGNORED] * 6
    assert get_queue().count == 0
    assert get_queue().failed_job_registry.count == 0
    # One job ran and applied all six; the other five were removed before they ran.
    assert get_queue().finished_job_registry.get_job_ids() == [jobs.job_id(evts[0]["id"])]


@pytest.mark.parametrize("app_config", [{"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_WEBHOOK_BATCH_SIZE": 1}])
def test_a_batch_of_one_applies_only_its_own_event(client):
    evts = unknown_events(3)
    for evt in evts:
        assert se.post(client, evt).status_code == 200

    run_job(jobs.process_webhook_event, evts[1]["id"])

    assert [row.status for row in events()] == [
        WebhookState.PENDING,
        WebhookState.IGNORED,
        WebhookState.PENDING,
    ]
    assert len(queued_ids()) == 3  # RQ removes a job from the queue as it starts it; run_job does not


def test_a_taken_along_event_that_fails_keeps_its_job_and_fails_nobody_else(client, monkeypatch, log_lines):
    def broken(ctx: Context, obj: dict[str, Any]) -> str:
        raise RuntimeError("this one is broken")

    monkeypatch.setitem(handlers.HANDLERS, "invoice.created", broken)
    first, second = unknown_events(2)
    failing = se.event("invoice.created", {"id": se.new_id("in"), "object": "invoice"})
    for evt in (first, failing, second):
        assert se.post(client, evt).status_code == 200

    run_job(jobs.process_webhook_event, first["id"])

    assert stored(first["id"]).status == WebhookState.IGNORED
    assert stored(second["id"]).status == WebhookState.IGNORED
    # The batch ran straight through, hit the failure, and was applied again event by event.
    [isolating] = [e for e in log_lines() if e["event"] == "stripe_webhook_take_along_isolating"]
    assert isolating["failed_event_id"] == failing["id"]
    # Rolled back and left pending, with its own job still waiting...
    assert stored(failing["id"]).status == WebhookState.PENDING
    assert waiting_ids() == [jobs.job_id(first["id"]), jobs.job_id(failing["id"])]
    # ...which records the failure and raises, so RQ retries it with backoff.
    with pytest.raises(RuntimeError, match="this one is broken"):
        run_job(jobs.process_webhook_event, failing["id"])
    row = stored(failing["id"])
    assert row.status == WebhookState.FAILED and row.last_error == "RuntimeError: this one is broken"


def test_a_taken_along_payment_that_fails_after_fulfilling_queues_no_closing(client, monkeypatch, recovering):
    """Its savepoint rolls the fulfilment back, and the closing job it asked for goes with it."""
    real = handlers.HANDLERS["checkout.session.completed"]

    def broken(ctx: Context, obj: dict[str, Any]) -> str:
        real(ctx, obj)  # fulfils, and so asks for the closing job after the commit
        raise RuntimeError("fails after fulfilling")

    monkeypatch.setitem(handlers.HANDLERS, "checkout.session.completed", broken)
    [first] = unknown_events(1)
    paid = se.event(
        "checkout.session.completed", se.checkout_session(txn_of(recovering), id=recovering["session_id"])
    )
    for evt in (first, paid):
        assert se.post(client, evt).status_code == 200

    run_job(jobs.process_webhook_event, first["id"])

    assert stored(first["id"]).status == WebhookState.IGNORED
    assert stored(paid["id"]).status == WebhookState.PENDING  # rolled back, its own job still waiting
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
    assert [j for j in get_queue().jobs if j.func_name.endswith("close_payment_options")] == []


def test_a_failing_event_without_a_job_is_left_for_the_sweeper(client, monkeypatch, app):
    # Redis was down when it arrived: stored, no job. A take-along must not fail it for good.
    def broken(ctx: Context, obj: dict[str, Any]) -> str:
        raise RuntimeError("this one is broken")

    monkeypatch.setitem(handlers.HANDLERS, "invoice.created", broken)
    failing = se.event("invoice.created", {"id": se.new_id("in"), "object": "invoice"})
    assert se.post(client, failing).status_code == 200
    Redis.from_url(app.config["REDIS_URL"]).flushdb()
    [mine] = unknown_events(1)
    assert se.post(client, mine).status_code == 200

    run_job(jobs.process_webhook_event, mine["id"])

    assert stored(failing["id"]).status == WebhookState.PENDING
    # A minute later the sweeper queues its job, which fails and retries it as usual.
    _db.session.execute(
        WebhookEvent.__table__.update().values(received_at=utcnow() - timedelta(minutes=5))  # type: ignore[attr-defined]
    )
    _db.session.commit()
    assert run_job(jobs.sweep_webhook_events) == {"pending": 1, "enqueued": 1}
    assert jobs.job_id(failing["id"]) in waiting_ids()


def test_a_taken_along_event_locked_elsewhere_is_skipped(app, client, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite serialises writers anyway")
    mine, busy = unknown_events(2)
    for evt in (mine, busy):
        assert se.post(client, evt).status_code == 200
    other = _db.engine.connect()  # another worker, in the middle of applying `busy`
    other.execute(select(WebhookEvent).where(WebhookEvent.stripe_event_id == busy["id"]).with_for_update())
    try:
        began = time.monotonic()
        run_job(jobs.process_webhook_event, mine["id"])
        assert time.monotonic() - began < 2  # did not wait for the lock
    finally:
        other.rollback()
        other.close()

    assert stored(mine["id"]).status == WebhookState.IGNORED
    assert stored(busy["id"]).status == WebhookState.PENDING
    assert jobs.job_id(busy["id"]) in queued_ids()  # left to whoever holds it, or its own job


def test_a_job_whose_event_is_held_elsewhere_works_on_others_first(app, client, database_url):
    """Workers must not queue behind each other's batches: that drained no faster with two than one."""
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite serialises writers anyway")
    mine, waiting = unknown_events(2)
    for evt in (mine, waiting):
        assert se.post(client, evt).status_code == 200
    other = _db.engine.connect()  # another worker's batch holds `mine`, then gives it up unapplied
    other.execute(select(WebhookEvent).where(WebhookEvent.stripe_event_id == mine["id"]).with_for_update())
    release = threading.Timer(1.0, other.rollback)
    release.start()
    try:
        assert run_job(jobs.process_webhook_event, mine["id"]) == WebhookState.IGNORED
    finally:
        release.join()
        other.close()

    # It applied the waiting event first, then its own once the other batch let go of it.
    assert stored(waiting["id"]).status == stored(mine["id"]).status == WebhookState.IGNORED
    assert stored(waiting["id"]).processed_at < stored(mine["id"]).processed_at
    assert stored(mine["id"]).attempts == 1


def test_jobs_queued_under_their_old_paths_still_run(app):
    """Jobs that moved in issue 17 keep a name at the old path, for the runs Redis already holds."""
    from recovery.payments import jobs as payment_jobs

    assert jobs.close_payment_options is payment_jobs.close_payment_options

    jobs.start_imported_recovery(12345)

    [queued] = get_queue().get_jobs()
    assert queued.func_name == "recovery.recoveries.jobs.start_imported_recovery"
    assert queued.args == (12345,)
