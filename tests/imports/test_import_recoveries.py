"""After an import: "Start recoveries" sends its failures to bulk starts, where the rules decide each one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.campaigns import builtin
from recovery.models import AuditEvent, Organization, RecoveryAttempt, Transaction, User
from tests.fixtures.csvdata import csv_bytes, row
from tests.fixtures.imports import the_import, upload


def _imported(client: FlaskClient, db: Any) -> Any:
    records = [
        row(1, failure_code="insufficient_funds"),
        row(2, failure_code="expired_card"),
        row(3, failure_code="stolen_card"),
    ]
    assert upload(client, csv_bytes(records)).status_code == 302
    return the_import(db)


def test_start_recoveries_lets_the_rules_decide_each_imported_failure(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, rq_worker: Any
) -> None:
    user = signed_in("operator")
    organization = db.session.get(Organization, user.organization_id)
    builtin.install(db.session, organization)
    db.session.commit()
    csv_import = _imported(client, db)
    page = client.get(f"/imports/{csv_import.id}").get_data(as_text=True)
    assert "choose each imported failure's campaign" in page and ">Start recoveries</button>" in page

    response = client.post(f"/imports/{csv_import.id}/start-recoveries")
    assert response.status_code == 302 and "/recoveries/bulk/" in response.headers["Location"]
    rq_worker()

    db.session.expire_all()
    by_ref = {t.transaction_ref: t for t in db.session.scalars(select(Transaction))}
    attempts = {a.transaction_id: a for a in db.session.scalars(select(RecoveryAttempt))}
    soft, expired, stolen = (by_ref[f"CSV-00000{n}"] for n in (1, 2, 3))
    assert "retry it" in attempts[soft.id].rule_name and attempts[soft.id].campaign_version_id
    assert "New card needed" in attempts[expired.id].rule_name
    # Lost, stolen or fraud: never contacted, and the transaction says why.
    assert stolen.id not in attempts and stolen.no_recovery_reason
    assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "import.recoveries_started"))

    # Asking again finds nothing waiting: nothing is started twice.
    again = client.post(f"/imports/{csv_import.id}/start-recoveries", follow_redirects=True)
    assert "No transaction of this import is waiting for a recovery." in again.get_data(as_text=True)
    assert len(db.session.scalars(select(RecoveryAttempt)).all()) == 2


def test_a_viewer_cannot_start_recoveries_and_does_not_see_the_button(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, make_user: Any
) -> None:
    operator = signed_in("operator")
    csv_import = _imported(client, db)
    client.post("/logout")
    signed_in("viewer", org=db.session.get(Organization, operator.organization_id))
    assert ">Start recoveries</button>" not in client.get(f"/imports/{csv_import.id}").get_data(as_text=True)
    assert client.post(f"/imports/{csv_import.id}/start-recoveries").status_code == 403
    assert db.session.scalars(select(RecoveryAttempt)).all() == []


def test_another_organizations_import_is_not_found(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, make_org: Any
) -> None:
    signed_in("operator")
    csv_import = _imported(client, db)
    client.post("/logout")
    signed_in("operator", org=make_org())
    assert client.post(f"/imports/{csv_import.id}/start-recoveries").status_code == 404
