"""Bulk start from the transactions list: an RQ job that starts hundreds of recoveries, with progress."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from redis.exceptions import RedisError
from rq.job import Job

from recovery.audit import Actor
from recovery.boundary import QUEUE_DOWN
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    BulkStart,
    Organization,
    RecoveryAttempt,
    Transaction,
    utcnow,
)
from recovery.queue import get_queue, redis_connection
from recovery.recoveries import bulk, jobs, lifecycle

HX = {"HX-Request": "true"}


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    return make_org(name="Acme Shop", excluded_failure_codes="stolen_card", quiet_hours="")


def attempts(db: Any, org: Organization) -> list[RecoveryAttempt]:
    db.session.expire_all()
    return list(
        db.session.scalars(sa.select(RecoveryAttempt).where(RecoveryAttempt.organization_id == org.id))
    )


def progress_url(response: Any) -> str:
    assert response.status_code == 302, response.data
    location = response.headers["Location"]
    assert re.fullmatch(r"/recoveries/bulk/\d+", location), location
    return location


def bulk_row(db: Any, url: str) -> BulkStart:
    """The BulkStart behind a progress page's URL, read afresh."""
    db.session.expire_all()
    row = db.session.get(BulkStart, int(url.rsplit("/", 1)[1]))
    assert row is not None
    return row


@pytest.mark.parametrize(("role", "shown"), [("viewer", False), ("operator", True), ("owner", True)])
def test_the_list_offers_selection_to_operators_and_above(
    client: FlaskClient, signed_in: Any, org: Organization, make_transaction: Any, role: str, shown: bool
) -> None:
    signed_in(role, org=org)
    transaction = make_transaction(org)

    page = client.get("/transactions").get_data(as_text=True)

    row_box = f'<input type="checkbox" name="ids" value="{transaction.id}" form="bulk-form"'
    assert (row_box in page) == shown
    assert ('id="bulk-form"' in page) == shown
    assert ("Select all on this page" in page) == shown
    if shown:
        assert 'action="/recoveries/bulk"' in page
        for channel in ("any", "email", "sms"):
            assert f'name="channel" value="{channel}"' in page


def test_hundreds_start_in_one_job_and_refusals_are_listed(
    client: FlaskClient,
    db: Any,
    signed_in: Any,
    org: Organization,
    make_org: Any,
    make_transaction: Any,
    work: Callable[[], None],
) -> None:
    user = signed_in("operator", org=org)
    good = [make_transaction(org) for _ in range(230)]
    running = make_transaction(org, transaction_ref="RUNNING-1")
    lifecycle.start_recovery(db.session, running, Actor.system(org.id), now=utcnow())
    db.session.commit()
    no_contact = make_transaction(org, transaction_ref="NOCONTACT-1", customer_email=None)
    excluded = make_transaction(org, transaction_ref="EXCLUDED-1", failure_code="stolen_card")
    paid = make_transaction(org, transaction_ref="PAID-1", status="recovered")
    theirs = make_transaction(make_org())
    selected = [t.id for t in good] + [running.id, no_contact.id, excluded.id, paid.id, theirs.id]

    url = progress_url(client.post("/recoveries/bulk", data={"ids": selected, "channel": "any"}))

    queued = client.get(url).get_data(as_text=True)
    assert "Starting 235 recoveries" in queued
    assert "queued" in queued and 'hx-trigger="every 1s"' in queued
    assert len(attempts(db, org)) == 1  # nothing until the worker runs

    work()

    done = client.get(url).get_data(as_text=True)
    assert '<span class="status status-done">done</span>' in done
    assert "hx-trigger" not in done  # the page stops polling
    assert '<dd id="bulk-started">230</dd>' in done
    assert '<dd id="bulk-refused">5</dd>' in done
    for ref, reason in [
        ("RUNNING-1", "A recovery is already running"),
        ("NOCONTACT-1", "no email address or phone number"),
        ("EXCLUDED-1", "Failure code stolen_card is excluded"),
        ("PAID-1", "is already paid"),
        (f"#{theirs.id}", "Transaction not found."),
    ]:
        assert re.search(
            rf"{re.escape(ref)}.*?</td><td data-label=\"Reason\">[^<]*{re.escape(reason)}", done
        ), ref
    assert theirs.transaction_ref not in done

    started = [a for a in attempts(db, org) if a.transaction_id != running.id]
    assert len(started) == 230
    assert {a.transaction_id for a in started} == {t.id for t in good}
    # The first sends were scheduled after each chunk's commit, and the worker sent them.
    assert {a.status for a in started} == {AttemptStatus.NOTIFIED}
    assert {db.session.get(Transaction, t.id).status for t in good} == {"recovering"}
    actions = db.session.execute(
        sa.select(AuditEvent.action, sa.func.count())
        .where(AuditEvent.actor_user_id == user.id, AuditEvent.action.like("recovery.%"))
        .group_by(AuditEvent.action)
    ).all()
    assert dict(actions) == {"recovery.started": 230, "recovery.bulk_started": 1}
    summary = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "recovery.bulk_started"))
    assert summary.details == {"requested": 235, "started": 230, "refused": 5, "channel": "any"}
    row = bulk_row(db, url)
    assert (summary.target_type, summary.target_id) == ("bulk_start", str(row.id))
    assert (row.status, row.processed, row.started, row.refused, row.runs) == ("done", 235, 230, 5, 1)
    assert row.finished_at is not None


@pytest.mark.parametrize(("channel", "expected"), [("email", "email"), ("sms", "sms"), ("any", "both")])
def test_the_channel_choice_applies_to_every_transaction(
    client: FlaskClient,
    db: Any,
    signed_in: Any,
    org: Organization,
    make_transaction: Any,
    work: Callable[[], None],
    channel: str,
    expected: str,
) -> None:
    signed_in("operator", org=org)
    both = make_transaction(org, customer_phone="+14155550123")
    email_only = make_transaction(org, transaction_ref="EMAILONLY-1")

    url = progress_url(
        client.post("/recoveries/bulk", data={"ids": [both.id, email_only.id], "channel": channel})
    )
    work()

    by_transaction = {a.transaction_id: a.channel for a in attempts(db, org)}
    assert by_transaction[both.id] == expected
    page = client.get(url).get_data(as_text=True)
    if channel == "sms":
        assert email_only.id not in by_transaction
        assert "EMAILONLY-1" in page and "The customer has no phone number." in page
    else:
        assert by_transaction[email_only.id] == "email"


def create(db: Any, org: Organization, ids: list[int], channel: str = "any") -> int:
    """A committed bulk start of `ids` whose job is not in the queue (run by hand, or lost); its id."""
    row = bulk.create(db.session, Actor.system(org.id), ids, channel)
    db.session.commit()  # which queues its run
    Job.fetch(bulk.run_job_id(row.id, 1), connection=redis_connection()).delete()
    return row.id


def test_one_commit_per_chunk_with_its_progress(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any
) -> None:
    """After each chunk its attempts and the row's counts are visible together to another connection."""
    signed_in("viewer", org=org)
    ids = [make_transaction(org).id for _ in range(bulk.CHUNK * 2 + 7)]
    bulk_id = create(db, org, ids)
    seen: list[tuple[int, int, int, str]] = []
    pages: list[str] = []
    other = sa.create_engine(db.engine.url)
    try:
        while True:
            more = bulk.step(db.session, bulk_id)
            with other.connect() as conn:
                visible = conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(RecoveryAttempt)
                    .where(RecoveryAttempt.organization_id == org.id)
                )
                row = conn.execute(
                    sa.select(BulkStart.processed, BulkStart.started, BulkStart.status).where(
                        BulkStart.id == bulk_id
                    )
                ).one()
            seen.append((row.processed, row.started, visible, row.status))
            pages.append(client.get(f"/recoveries/bulk/{bulk_id}", headers=HX).get_data(as_text=True))
            if not more:
                break
    finally:
        other.dispose()

    assert seen == [(50, 50, 50, "running"), (100, 100, 100, "running"), (107, 107, 107, "done")]
    # The page reads the row: what is committed is what it shows.
    assert "50 of 107 transactions checked" in pages[0] and 'value="46"' in pages[0]
    assert '<dd id="bulk-started">100</dd>' in pages[1] and "status-running" in pages[1]
    assert "107 of 107" in pages[2] and 'value="100"' in pages[2] and "hx-get" not in pages[2]
    assert bulk.step(db.session, bulk_id) is False  # done: nothing more, nothing changed
    assert bulk_row(db, f"/{bulk_id}").processed == 107


def test_running_a_bulk_start_again_starts_nothing_twice(
    db: Any, org: Organization, make_transaction: Any
) -> None:
    ids = [make_transaction(org).id for _ in range(3)]
    bulk_id = create(db, org, ids)
    bulk.run(db.session, bulk_id)

    bulk.run(db.session, bulk_id)  # the same job run again, e.g. queued twice

    row = bulk_row(db, f"/{bulk_id}")
    assert (row.status, row.processed, row.started, row.refused) == ("done", 3, 3, 0)
    assert len(attempts(db, org)) == 3
    assert (
        db.session.scalar(sa.select(sa.func.count()).where(AuditEvent.action == "recovery.bulk_started")) == 1
    )

    # Another bulk start of the same transactions: each is refused as already running.
    again = create(db, org, ids)
    bulk.run(db.session, again)
    row = bulk_row(db, f"/{again}")
    assert (row.started, row.refused) == (0, 3)
    assert row.reasons == {
        "A recovery is already running for this transaction; cancel it before starting another.": 3
    }
    assert len(attempts(db, org)) == 3


def test_two_runs_at_once_take_turns_chunk_by_chunk(
    app: Flask, db: Any, org: Organization, make_transaction: Any
) -> None:
    """A second run waits on the row's lock while the first works a chunk, then takes the next chunk."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("row locks: SQLite serialises writers on the whole database instead")
    ids = [make_transaction(org).id for _ in range(bulk.CHUNK * 2)]
    bulk_id = create(db, org, ids)
    first = sa.orm.Session(db.engine)
    bulk._lock(first, bulk_id)  # run 1 is in its first chunk
    outcome: list[bool] = []

    def second_run() -> None:
        with app.app_context():
            try:
                outcome.append(bulk.step(db.session, bulk_id))
            finally:
                db.session.remove()

    thread = threading.Thread(target=second_run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not waiting_on_a_lock(db) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert waiting_on_a_lock(db), "the second run did not wait for the first"
        assert bulk.step(first, bulk_id) is True  # run 1 commits chunk 1; run 2 goes on
        thread.join(timeout=30)
    finally:
        first.close()
    assert outcome == [False]  # run 2 took chunk 2 (the last), not chunk 1 again

    row = bulk_row(db, f"/{bulk_id}")
    assert (row.status, row.processed, row.started, row.refused) == ("done", 100, 100, 0)
    assert sorted(a.transaction_id for a in attempts(db, org)) == sorted(ids)


def waiting_on_a_lock(db: Any) -> bool:
    with db.engine.connect() as conn:
        return bool(
            conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
        )


def bulk_jobs() -> list[str]:
    """The bulk start runs waiting in the queue (the sends they scheduled left out)."""
    return [job for job in get_queue().job_ids if job.startswith(bulk.JOB_PREFIX)]


def age(db: Any, bulk_id: int, by: timedelta) -> None:
    """Move the bulk start's last change back by `by` (stand-in for waiting)."""
    db.session.expire_all()
    row = db.session.get(BulkStart, bulk_id)
    db.session.execute(
        sa.update(BulkStart).where(BulkStart.id == bulk_id).values(updated_at=row.updated_at - by)
    )
    db.session.commit()


def test_the_sweeper_resumes_a_stalled_bulk_start_once_and_leaves_live_ones_alone(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any, work: Any
) -> None:
    signed_in("viewer", org=org)
    ids = [make_transaction(org).id for _ in range(bulk.CHUNK + 5)]
    stalled_id = create(db, org, ids)
    bulk.step(db.session, stalled_id)  # its worker committed one chunk, then died
    fresh_id = create(db, org, [make_transaction(org).id])
    queued_id = create(db, org, [make_transaction(org).id])
    done_id = create(db, org, [make_transaction(org).id])
    bulk.run(db.session, done_id)
    job = bulk.enqueue_run(db.session.get(BulkStart, queued_id))  # waits in the queue (a backlog)
    for old in (stalled_id, queued_id, done_id):
        age(db, old, bulk.STALLED_AFTER + timedelta(seconds=5))
    now = utcnow()

    page = client.get(f"/recoveries/bulk/{stalled_id}").get_data(as_text=True)
    assert "status-stalled" in page and "Stalled — resuming" in page and 'hx-trigger="every 1s"' in page
    assert "50 of 55 transactions checked" in page
    assert "Stalled" not in client.get(f"/recoveries/bulk/{fresh_id}").get_data(as_text=True)

    assert bulk.resume_stalled(db.session, now) == 1
    assert bulk_jobs() == [job, f"bulk-start-{stalled_id}-2"]
    assert bulk_row(db, f"/{stalled_id}").runs == 2
    # The next sweeps, before STALLED_AFTER passes again, queue nothing more.
    assert bulk.resume_stalled(db.session, now + timedelta(minutes=1)) == 0
    assert len(bulk_jobs()) == 2

    work()

    row = bulk_row(db, f"/{stalled_id}")
    assert (row.status, row.processed, row.started, row.refused, row.runs) == ("done", 55, 55, 0, 2)
    assert "Stalled" not in client.get(f"/recoveries/bulk/{stalled_id}").get_data(as_text=True)
    assert bulk_row(db, f"/{queued_id}").runs == 1  # its own job ran it


def test_the_send_sweeper_resumes_stalled_bulk_starts(
    db: Any, org: Organization, make_transaction: Any
) -> None:
    bulk_id = create(db, org, [make_transaction(org).id])  # the request's enqueue was lost

    assert jobs.sweep_once(utcnow()) == 0
    assert bulk_jobs() == []
    jobs.sweep_once(utcnow() + bulk.STALLED_AFTER + timedelta(seconds=1))
    assert bulk_jobs() == [f"bulk-start-{bulk_id}-2"]


def test_a_run_that_fails_is_marked_failed_and_an_operator_resumes_it(
    client: FlaskClient,
    db: Any,
    signed_in: Any,
    org: Organization,
    make_transaction: Any,
    work: Any,
    monkeypatch: Any,
) -> None:
    user = signed_in("operator", org=org)
    ids = [make_transaction(org).id for _ in range(bulk.CHUNK + 1)]
    url = progress_url(client.post("/recoveries/bulk", data={"ids": ids, "channel": "any"}))
    real_start = lifecycle.start_recovery
    calls = 0

    def broken_after_one_chunk(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > bulk.CHUNK:
            raise RuntimeError("the disk is full")
        return real_start(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "start_recovery", broken_after_one_chunk)
    work()  # a forked work horse: it has the broken start_recovery too

    row = bulk_row(db, url)
    assert (row.status, row.processed, row.started, row.error) == ("failed", 50, 50, "the disk is full")
    page = client.get(url).get_data(as_text=True)
    assert "The job stopped: the disk is full." in page and "Resume from transaction 51" in page
    assert "hx-get" not in page
    # An error in our code is no crash: the sweeper leaves it to the operator.
    assert bulk.resume_stalled(db.session, utcnow() + timedelta(hours=1)) == 0

    monkeypatch.setattr(lifecycle, "start_recovery", real_start)
    response = client.post(f"{url}/resume")
    assert response.status_code == 302 and response.headers["Location"] == url
    work()

    row = bulk_row(db, url)
    assert (row.status, row.processed, row.started, row.error, row.runs) == ("done", 51, 51, None, 2)
    assert len(attempts(db, org)) == 51
    resumed = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "recovery.bulk_resumed"))
    assert (resumed.actor_user_id, resumed.target_id, resumed.details) == (
        user.id,
        str(row.id),
        {"processed": 50, "total": 51},
    )
    # Only a failed one can be resumed.
    assert "Only a bulk start that stopped" in client.get(
        client.post(f"{url}/resume").headers["Location"]
    ).get_data(as_text=True)


def test_viewers_cannot_resume(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any
) -> None:
    signed_in("viewer", org=org)
    bulk_id = create(db, org, [make_transaction(org).id])

    assert client.post(f"/recoveries/bulk/{bulk_id}/resume").status_code == 403


def test_a_job_queued_by_the_old_release_starts_nothing_and_does_not_fail(
    db: Any, org: Organization, make_transaction: Any, work: Callable[[], None]
) -> None:
    transaction = make_transaction(org)
    job = get_queue().enqueue(
        "recovery.recoveries.bulk.start_many", org.id, "someone", None, None, [transaction.id], "any", None
    )

    work()

    assert job.get_status() == "finished"
    assert attempts(db, org) == []


def test_viewers_cannot_start_a_batch(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any
) -> None:
    signed_in("viewer", org=org)
    transaction = make_transaction(org)

    response = client.post("/recoveries/bulk", data={"ids": [transaction.id], "channel": "any"})

    assert response.status_code == 403
    assert get_queue().count == 0 and attempts(db, org) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"channel": "any"}, "Select at least one transaction."),
        ({"ids": ["x", "-1"], "channel": "any"}, "Select at least one transaction."),
        (
            {"ids": [str(n) for n in range(1, bulk.MAX_TRANSACTIONS + 2)], "channel": "any"},
            "Select at most 5,000",
        ),
        ({"ids": ["1"], "channel": "pigeon"}, "This form has expired"),
    ],
)
def test_an_unusable_request_goes_back_to_the_list_and_says_why(
    client: FlaskClient, signed_in: Any, org: Organization, data: dict[str, Any], message: str
) -> None:
    signed_in("operator", org=org)

    response = client.post("/recoveries/bulk", data={**data, "next": "/transactions?status=failed"})

    assert response.status_code == 303 and response.headers["Location"] == "/transactions?status=failed"
    assert message in client.get(response.headers["Location"]).get_data(as_text=True)
    assert get_queue().count == 0


def test_a_foreign_next_is_not_followed(client: FlaskClient, signed_in: Any, org: Organization) -> None:
    signed_in("operator", org=org)

    response = client.post("/recoveries/bulk", data={"channel": "any", "next": "https://evil.example/"})

    assert response.headers["Location"] == "/transactions"


def test_queue_down_keeps_the_bulk_start_for_the_sweeper(
    client: FlaskClient,
    db: Any,
    signed_in: Any,
    org: Organization,
    make_transaction: Any,
    monkeypatch: Any,
    work: Callable[[], None],
) -> None:
    signed_in("operator", org=org)
    transaction = make_transaction(org)

    def down(*args: Any, **kwargs: Any) -> None:
        raise RedisError("connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(bulk, "get_queue", lambda: type("Q", (), {"enqueue": down})())
        url = progress_url(client.post("/recoveries/bulk", data={"ids": [transaction.id], "channel": "any"}))

    page = client.get(url).get_data(as_text=True)
    assert QUEUE_DOWN in page
    assert attempts(db, org) == [] and bulk_row(db, url).status == "queued"
    # Redis is back: the sweeper finds the bulk start that never moved and queues it.
    assert bulk.resume_stalled(db.session, utcnow() + bulk.STALLED_AFTER + timedelta(seconds=1)) == 1
    work()
    assert [a.transaction_id for a in attempts(db, org)] == [transaction.id]
    assert bulk_row(db, url).status == "done"


def test_progress_is_for_the_organization_that_started_it(
    client: FlaskClient, app: Flask, signed_in: Any, org: Organization, make_org: Any, make_transaction: Any
) -> None:
    signed_in("operator", org=org)
    url = progress_url(
        client.post("/recoveries/bulk", data={"ids": [make_transaction(org).id], "channel": "any"})
    )
    client.post("/logout")
    signed_in("owner", org=make_org())

    assert client.get(url).status_code == 404
    assert client.get(url, headers=HX).status_code == 404
    assert client.post(f"{url}/resume").status_code == 404
    assert client.get("/recoveries/bulk/999999").status_code == 404
    assert client.get("/recoveries/bulk/bulk-start-" + "0" * 32).status_code == 404  # the old URLs


def test_the_progress_fragment_polls_until_done(
    client: FlaskClient, signed_in: Any, org: Organization, make_transaction: Any, work: Callable[[], None]
) -> None:
    signed_in("operator", org=org)
    url = progress_url(
        client.post("/recoveries/bulk", data={"ids": [make_transaction(org).id], "channel": "any"})
    )

    running = client.get(url, headers=HX).get_data(as_text=True)
    assert running.lstrip().startswith('<section id="bulk-progress"') and "<html" not in running
    assert f'hx-get="{url}"' in running

    work()
    done = client.get(url, headers=HX).get_data(as_text=True)
    assert "hx-get" not in done and "View recoveries" in done
