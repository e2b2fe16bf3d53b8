"""The recovery settings page (/settings/recovery) and per-attempt fallback (form and API)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from recovery.audit import Actor
from recovery.messaging import contacts
from recovery.models import AuditEvent, Organization, RecoveryAttempt, Role, utcnow
from recovery.recoveries import lifecycle
from recovery.recoveries.forms import StartRecoveryForm
from tests.conftest import bearer

VALID = {
    "recovery_schedule": "0,2,4",
    "attempt_lifetime_days": "10",
    "email_from_name": "Acme Billing",
    "reply_to_email": "Billing@Acme.Example",
    "excluded_failure_codes": "fraudulent, stolen_card,\nFRAUDULENT",
    "quiet_hours": "22:00-07:30",
    "fallback_channels": ["email"],
    "auto_start_recoveries": "y",
}


def org_of(db: Any, user: Any) -> Organization:
    db.session.expire_all()
    return db.session.get(Organization, user.organization_id)


def test_the_page_shows_the_current_settings(client, signed_in):
    signed_in("admin")

    page = client.get("/settings/recovery")

    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'value="0,1,3,6"' in html and 'value="7"' in html
    assert "Start a recovery automatically for failed payments imported from Stripe" in html
    assert 'href="/settings/recovery"' in html  # in the navigation


def test_saving_applies_cleans_and_audits(client, db, signed_in):
    user = signed_in("owner")

    response = client.post("/settings/recovery", data=VALID)

    assert response.status_code == 302
    org = org_of(db, user)
    assert org.recovery_schedule == "0,2,4" and org.attempt_lifetime_days == 10
    assert org.email_from_name == "Acme Billing"
    assert org.reply_to_email == "Billing@acme.example"  # email-validator normalises the domain
    assert org.excluded_failure_codes == "fraudulent,stolen_card"
    assert org.quiet_hours == "22:00-07:30"
    assert org.fallback_channels == "email" and org.auto_start_recoveries is True
    event = db.session.scalar(
        select(AuditEvent).where(AuditEvent.action == "organization.recovery_settings_changed")
    )
    assert event.actor_user_id == user.id
    assert event.details["changes"]["recovery_schedule"] == ["0,1,3,6", "0,2,4"]
    assert event.details["changes"]["auto_start_recoveries"] == [False, True]
    assert "email_from_name" in event.details["changes"]


def test_saving_nothing_new_records_nothing(client, db, signed_in):
    user = signed_in("owner")
    org = org_of(db, user)
    same = {
        "recovery_schedule": org.recovery_schedule,
        "attempt_lifetime_days": str(org.attempt_lifetime_days),
        "quiet_hours": org.quiet_hours,
        "fallback_channels": ["email", "sms"],
    }

    assert client.post("/settings/recovery", data=same).status_code == 302

    assert (
        db.session.scalar(
            select(AuditEvent).where(AuditEvent.action == "organization.recovery_settings_changed")
        )
        is None
    )


def test_quiet_hours_and_fallback_can_be_switched_off(client, db, signed_in):
    user = signed_in("owner")

    client.post("/settings/recovery", data={**VALID, "quiet_hours": "", "fallback_channels": []})

    org = org_of(db, user)
    assert org.quiet_hours == "" and org.fallback_channels == ""


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("recovery_schedule", "0,3,1", "must increase"),
        ("recovery_schedule", "zero", "whole numbers"),
        ("recovery_schedule", "0,5,12", "before the link expires"),
        ("attempt_lifetime_days", "0", "Give a number of days"),
        ("attempt_lifetime_days", "91", "1 to 90 days"),
        ("reply_to_email", "not-an-address", "not valid"),
        ("reply_to_email", "a@b", "not valid"),
        ("email_from_name", "Evil <x@evil.example>", "without"),
        ("excluded_failure_codes", "expired card", "Failure codes are Stripe"),
        ("quiet_hours", "9pm-8am", "21:00-08:00"),
        ("fallback_channels", ["pigeon"], "not a valid choice"),
    ],
)
def test_invalid_settings_are_refused_and_nothing_changes(client, db, signed_in, field, value, message):
    user = signed_in("owner")

    response = client.post("/settings/recovery", data={**VALID, field: value})

    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    org = org_of(db, user)
    assert org.recovery_schedule == "0,1,3,6" and org.auto_start_recoveries is False
    assert db.session.scalar(select(AuditEvent).where(AuditEvent.action.like("organization.%"))) is None


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.VIEWER])
def test_only_owners_and_admins_change_settings(client, db, signed_in, role):
    user = signed_in(role)

    assert client.get("/settings/recovery").status_code == 403
    assert client.post("/settings/recovery", data=VALID).status_code == 403
    assert org_of(db, user).recovery_schedule == "0,1,3,6"


# --- fallback per organization and per attempt -------------------------------------------


def start(db: Any, transaction: Any, **options: Any) -> RecoveryAttempt:
    started = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id), now=utcnow(), **options
    )
    db.session.commit()
    return started.attempt


@pytest.mark.parametrize(
    ("fallback_channels", "allow_fallback", "expected"),
    [
        ("email,sms", None, ["sms"]),
        ("email", None, ["sms"]),
        ("sms", None, []),  # a dead email may not fall back to SMS
        ("", None, []),
        ("email,sms", False, []),
    ],
)
def test_a_dead_email_falls_back_only_where_allowed(
    db, make_org, make_transaction, fallback_channels, allow_fallback, expected
):
    org = make_org(fallback_channels=fallback_channels)
    transaction = make_transaction(org, customer_email="ann@example.com", customer_phone="+14155550123")
    attempt = start(db, transaction, channels=["email"], allow_fallback=allow_fallback)
    assert attempt.allow_fallback is (bool(fallback_channels) if allow_fallback is None else allow_fallback)
    contacts.suppress(db.session, org.id, "email", "ann@example.com", "undeliverable")
    db.session.commit()

    assert contacts.effective_channels(db.session, attempt, transaction) == expected


def test_the_start_form_has_the_fallback_choice(app):
    with app.test_request_context():
        form = StartRecoveryForm(data={"allow_fallback": True})
        assert form.allow_fallback.data is True
        assert 'type="checkbox"' in str(form.allow_fallback())


def test_api_start_takes_allow_fallback(client, db, make_org, make_transaction, make_token):
    org = make_org()
    transaction = make_transaction(org, transaction_ref="TXN-FB")
    _, raw = make_token(org=org)

    response = client.post(
        "/v1/recoveries", json={"transaction_ref": "TXN-FB", "allow_fallback": False}, headers=bearer(raw)
    )

    assert response.status_code == 201
    assert response.json["allow_fallback"] is False
    db.session.expire_all()
    assert db.session.get(RecoveryAttempt, response.json["id"]).allow_fallback is False
    assert transaction.id


@pytest.mark.parametrize("value", ["no", 0, None])
def test_api_allow_fallback_must_be_a_boolean(client, db, make_org, make_transaction, make_token, value):
    org = make_org()
    make_transaction(org, transaction_ref="TXN-FB")
    _, raw = make_token(org=org)

    response = client.post(
        "/v1/recoveries", json={"transaction_ref": "TXN-FB", "allow_fallback": value}, headers=bearer(raw)
    )

    if value is None:  # null: the organization's default
        assert response.status_code == 201 and response.json["allow_fallback"] is True
    else:
        assert response.status_code == 422
        assert response.json["error"]["fields"] == {"allow_fallback": "Must be a boolean."}
