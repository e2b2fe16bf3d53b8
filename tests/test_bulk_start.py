"""Bulk start from the transactions list: an RQ job that starts hundreds of recoveries, with progress."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from redis.exceptions import RedisError
from rq import Worker

from recovery.audit import Actor
from recovery.models import AttemptStatus, AuditEvent, Organization, RecoveryAttempt, Transaction, utcnow
from recovery.queue import get_queue, redis_connection
from recovery.recoveries import bulk, services

HX = {"HX-Request": "true"}


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    return make_org(name="Acme Shop", excluded_failure_codes="stolen_card", quiet_hours="")


@pytest.fixture
def work(app: Flask, db: Any) -> Callable[[], None]:
    """A real RQ worker in burst mode: the bulk job, then the sends it scheduled."""

    def run() -> None:
        # The work horse is forked from this process: end the test's transaction first (the
        # connection goes back to the pool), or the horse would inherit it and share its socket.
        db.session.commit()
        Worker(["default"], connection=redis_connection(app)).work(burst=True, with_scheduler=False)

    return run


def attempts(db: Any, org: Organization) -> list[RecoveryAttempt]:
    db.session.expire_all()
    return list(
        db.session.scalars(sa.select(RecoveryAttempt).where(RecoveryAttempt.organization_id == org.id))
    )


def progress_url(response: Any) -> str:
    assert response.status_code == 302, response.data
    location = response.headers["Location"]
    assert re.fullmatch(r"/recoveries/bulk/bulk-start-[0-9a-f]{32}", location), location
    return location


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
    services.start_recovery(db.session, running, Actor.system(org.id), now=utcnow())
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


def test_one_commit_per_chunk(db: Any, app: Flask, org: Organization, make_transaction: Any) -> None:
    """After each chunk the started attempts are visible to another connection, and progress is reported."""
    ids = [make_transaction(org).id for _ in range(bulk.CHUNK * 2 + 7)]
    seen: list[tuple[int, int, int]] = []
    other = sa.create_engine(db.engine.url)

    def report(progress: bulk.Progress) -> None:
        with other.connect() as conn:
            visible = conn.scalar(
                sa.select(sa.func.count())
                .select_from(RecoveryAttempt)
                .where(RecoveryAttempt.organization_id == org.id)
            )
        seen.append((progress.processed, progress.started, visible))

    try:
        progress = bulk.run(
            db.session, Actor.system(org.id), ids, "any", bulk.Progress(org.id, len(ids), "any"), report
        )
    finally:
        other.dispose()

    assert seen == [(50, 50, 50), (100, 100, 100), (107, 107, 107)]
    assert progress.state == "done" and progress.percent == 100


def test_running_the_batch_twice_starts_each_recovery_once(
    db: Any, org: Organization, make_transaction: Any
) -> None:
    ids = [make_transaction(org).id for _ in range(3)]
    bulk.run(db.session, Actor.system(org.id), ids, "any", bulk.Progress(org.id, 3, "any"))

    again = bulk.run(db.session, Actor.system(org.id), ids, "any", bulk.Progress(org.id, 3, "any"))

    assert (again.started, again.refused) == (0, 3)
    assert again.reasons == {
        "A recovery is already running for this transaction; cancel it before starting another.": 3
    }
    assert len(attempts(db, org)) == 3


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

    assert response.status_code == 302 and response.headers["Location"] == "/transactions?status=failed"
    assert message in client.get(response.headers["Location"]).get_data(as_text=True)
    assert get_queue().count == 0


def test_a_foreign_next_is_not_followed(client: FlaskClient, signed_in: Any, org: Organization) -> None:
    signed_in("operator", org=org)

    response = client.post("/recoveries/bulk", data={"channel": "any", "next": "https://evil.example/"})

    assert response.headers["Location"] == "/transactions"


def test_queue_down_starts_nothing_and_says_so(
    client: FlaskClient, db: Any, signed_in: Any, org: Organization, make_transaction: Any, monkeypatch: Any
) -> None:
    signed_in("operator", org=org)
    transaction = make_transaction(org)

    def down(*args: Any, **kwargs: Any) -> None:
        raise RedisError("connection refused")

    monkeypatch.setattr(bulk, "get_queue", lambda: type("Q", (), {"enqueue": down})())
    response = client.post("/recoveries/bulk", data={"ids": [transaction.id], "channel": "any"})

    assert "The job queue is unreachable" in client.get(response.headers["Location"]).get_data(as_text=True)
    assert attempts(db, org) == []


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
    assert client.get("/recoveries/bulk/bulk-start-" + "0" * 32).status_code == 404
    assert client.get("/recoveries/bulk/recovery-send-1-0-1").status_code == 404


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
