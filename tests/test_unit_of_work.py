"""One unit of work: follow-ups wait for the commit; a request or a job commits once, or not at all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from recovery.api.errors import ApiError, install_error_handlers
from recovery.extensions import csrf
from recovery.jobs import app_job
from recovery.models import Organization
from recovery.refusals import Refused
from recovery.unit_of_work import commit_now, failed_follow_ups, on_commit, pending


def stored_name(db: Any, organization_id: int) -> str:
    """The name as another connection sees it: only what was committed."""
    with Session(db.engine) as other:
        organization = other.get(Organization, organization_id)
        assert organization is not None
        return organization.name


def test_a_follow_up_runs_once_the_transaction_commits(db: Any, org: Organization) -> None:
    calls: list[str] = []
    org.name = "Renamed"
    on_commit(db.session, calls.append, "queued")
    db.session.flush()
    assert calls == []

    db.session.commit()
    assert calls == ["queued"]
    db.session.commit()
    assert calls == ["queued"]  # once, not at every later commit


def test_a_rollback_drops_the_follow_ups(db: Any, org: Organization) -> None:
    calls: list[str] = []
    org.name = "Renamed"
    on_commit(db.session, calls.append, "queued")
    db.session.rollback()
    db.session.commit()

    assert calls == []
    assert pending(db.session) == []


def test_a_session_closed_without_committing_drops_them(db: Any, org: Organization) -> None:
    calls: list[str] = []
    org.name = "Renamed"
    on_commit(db.session, calls.append, "queued")
    db.session.close()
    db.session.commit()

    assert calls == []


def test_a_savepoint_is_not_the_commit(db: Any, org: Organization) -> None:
    calls: list[str] = []
    with db.session.begin_nested():
        org.name = "Renamed"
        on_commit(db.session, calls.append, "queued")
    assert calls == []

    db.session.commit()
    assert calls == ["queued"]


def test_a_failing_follow_up_is_recorded_and_the_others_still_run(db: Any, org: Organization) -> None:
    calls: list[str] = []

    def broken() -> None:
        raise ConnectionError("queue down")

    org.name = "Renamed"
    on_commit(db.session, broken)
    on_commit(db.session, calls.append, "second")
    db.session.commit()

    assert calls == ["second"]
    [(follow_up, error)] = failed_follow_ups(db.session)
    assert follow_up.fn is broken
    assert isinstance(error, ConnectionError)
    assert failed_follow_ups(db.session) == []  # read once
    assert stored_name(db, org.id) == "Renamed"  # the commit stands


@pytest.mark.parametrize("keep_state", [True, False])
def test_commit_now_keeps_loaded_state_only_when_asked(db: Any, org: Organization, keep_state: bool) -> None:
    organization_id = org.id
    org.name = "Reserved"
    commit_now(db.session, "the test goes on with what it wrote", keep_state=keep_state)

    assert ("name" in inspect(org).expired_attributes) is not keep_state
    assert stored_name(db, organization_id) == "Reserved"
    assert db.session().expire_on_commit is True  # the session's own setting is back


# The request boundary ----------------------------------------------------------------------


@pytest.fixture
def routes(app: Flask, db: Any, org: Organization, signed_in: Callable[..., Any]) -> list[str]:
    """Views that rename `org` and then return, refuse or fail; the list collects follow-ups.

    The client is signed in to `org` once the views are in place.
    """
    calls: list[str] = []

    def rename_then(outcome: str) -> str:
        organization = db.session.get(Organization, org.id)
        organization.name = f"Renamed ({outcome})"
        on_commit(db.session, calls.append, outcome)
        if outcome == "refused":
            raise Refused("That cannot be done: here is why.")
        if outcome == "broken":
            raise RuntimeError("a bug")
        return "done"

    page = csrf.exempt(lambda outcome: rename_then(outcome))
    app.add_url_rule("/_uow/<outcome>", "uow_page", page, methods=["POST"])

    api = Blueprint("uow_api", __name__)
    install_error_handlers(api)

    @api.post("/<outcome>")
    def call(outcome: str) -> str:
        if outcome == "conflict":
            raise ApiError(409, "conflict", "Already done.")
        if outcome == "too_small":
            raise Refused("The amount is too small.", field="amount", kind="invalid_request")
        return rename_then(outcome)

    csrf.exempt(api)
    app.register_blueprint(api, url_prefix="/v1/_uow")
    signed_in("owner", org)
    return calls


def test_a_view_that_returns_commits_once_then_runs_its_follow_ups(
    client: FlaskClient, db: Any, org: Organization, routes: list[str]
) -> None:
    response = client.post("/_uow/done")

    assert response.status_code == 200
    assert stored_name(db, org.id) == "Renamed (done)"
    assert routes == ["done"]


@pytest.mark.parametrize(
    ("referrer", "back_to"),
    [
        ("http://localhost/transactions?status=failed", "/transactions?status=failed"),
        ("https://evil.example/phish", "/transactions"),  # another site: the dashboard instead
        (None, "/transactions"),
    ],
)
def test_a_refused_page_keeps_nothing_and_goes_back_with_the_reason(
    client: FlaskClient,
    db: Any,
    org: Organization,
    routes: list[str],
    referrer: str | None,
    back_to: str,
) -> None:
    headers = {"Referer": referrer} if referrer else {}
    response = client.post("/_uow/refused", headers=headers)

    assert response.status_code == 303
    assert response.headers["Location"] == back_to
    assert stored_name(db, org.id) == org.name
    assert routes == []
    with client.session_transaction() as session:
        assert session["_flashes"] == [("error", "That cannot be done: here is why.")]


def test_a_refused_form_goes_back_to_its_safe_next(client: FlaskClient, routes: list[str]) -> None:
    response = client.post("/_uow/refused", data={"next": "/transactions/7"})
    assert response.headers["Location"] == "/transactions/7"

    response = client.post("/_uow/refused", data={"next": "//evil.example/"})
    assert response.headers["Location"] == "/transactions"


def test_a_failing_view_keeps_nothing(
    client: FlaskClient, db: Any, org: Organization, routes: list[str]
) -> None:
    with pytest.raises(RuntimeError):  # the test app lets the exception through
        client.post("/_uow/broken")

    assert stored_name(db, org.id) == org.name
    assert routes == []


def test_a_refusal_in_the_api_is_json_and_keeps_nothing(
    client: FlaskClient, db: Any, org: Organization, routes: list[str]
) -> None:
    response = client.post("/v1/_uow/refused")
    assert response.status_code == 422
    assert response.json == {
        "error": {"type": "validation_error", "message": "That cannot be done: here is why."}
    }
    assert stored_name(db, org.id) == org.name
    assert routes == []

    response = client.post("/v1/_uow/too_small")
    assert response.json == {
        "error": {
            "type": "invalid_request",
            "message": "The amount is too small.",
            "fields": {"amount": "The amount is too small."},
        }
    }

    response = client.post("/v1/_uow/conflict")
    assert response.status_code == 409
    assert response.json == {"error": {"type": "conflict", "message": "Already done."}}


# The job boundary --------------------------------------------------------------------------


def test_a_job_commits_when_it_returns_and_keeps_nothing_when_it_raises(db: Any, org: Organization) -> None:
    calls: list[str] = []

    @app_job
    def rename(organization_id: int, name: str, fail: bool) -> str:
        organization = db.session.get(Organization, organization_id)
        organization.name = name
        on_commit(db.session, calls.append, name)
        if fail:
            raise RuntimeError("the job failed")
        return name

    organization_id = org.id
    assert rename(organization_id, "First", False) == "First"
    assert stored_name(db, organization_id) == "First"
    assert calls == ["First"]

    with pytest.raises(RuntimeError):
        rename(organization_id, "Second", True)
    assert stored_name(db, organization_id) == "First"
    assert calls == ["First"]
