"""`/account`: a staff member changes their own name and password; both are audited."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from recovery.models import AuditEvent, User
from tests.conftest import PASSWORD, csrf_token, login

NEW_PASSWORD = "my own new passphrase"


def reload(db: Any, user: User) -> User:
    db.session.expire_all()
    return db.session.get(User, user.id)


def events(db: Any, user: User) -> list[AuditEvent]:
    return list(
        db.session.scalars(
            select(AuditEvent)
            .where(AuditEvent.organization_id == user.organization_id, AuditEvent.action != "user.signed_in")
            .order_by(AuditEvent.id)
        )
    )


def test_the_account_page_needs_a_sign_in(client):
    response = client.get("/account")

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


@pytest.mark.parametrize("role", ["viewer", "owner"])
def test_anyone_signed_in_changes_their_name(client, db, signed_in, role):
    user = signed_in(role)

    page = client.get("/account").get_data(as_text=True)
    response = client.post("/account/name", data={"name": "  Zoë Ångström  "}, follow_redirects=True)

    assert user.email in page and 'href="/account/sessions"' in page
    assert "Your name is saved." in response.get_data(as_text=True)
    assert reload(db, user).name == "Zoë Ångström"
    [event] = events(db, user)
    assert (event.action, event.actor_user_id, event.details) == (
        "user.name_changed",
        user.id,
        {"old": "", "new": "Zoë Ångström"},
    )


@pytest.mark.parametrize(
    ("name", "message"), [("n" * 201, "200"), ("Eve\u202egnp.exe", "U+202E"), ("tab\there", "control")]
)
def test_a_refused_name_is_shown_and_nothing_changes(client, db, signed_in, name, message):
    user = signed_in("viewer")

    response = client.post("/account/name", data={"name": name})

    assert response.status_code == 422
    error = response.get_data(as_text=True).split('<p class="error" id="name-error">', 1)
    assert len(error) == 2 and message in error[1].split("</p>", 1)[0]
    assert reload(db, user).name == ""
    assert events(db, user) == []


def test_changing_the_password_keeps_this_device_and_signs_out_the_others(app, client, db, signed_in):
    user = signed_in("operator")
    other_device = app.test_client()
    assert login(other_device, user).status_code == 302

    response = client.post(
        "/account/password",
        data={"current": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
        follow_redirects=True,
    )

    assert "Your password is changed. Every other device is signed out." in response.get_data(as_text=True)
    assert client.get("/transactions").status_code == 200, "this device stays signed in"
    assert other_device.get("/transactions").status_code == 302
    assert login(app.test_client(), user, PASSWORD).status_code == 401
    assert login(app.test_client(), user, NEW_PASSWORD).status_code == 302
    assert [e.action for e in events(db, user)] == ["user.password_changed"]


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"current": "not my password"}, "current", "The current password is not right."),
        ({"password": "short", "confirm": "short"}, "password", "at least 12 characters"),
        ({"confirm": "something different"}, "confirm", "not the same"),
        ({"password": PASSWORD, "confirm": PASSWORD}, "password", "the same as the current one"),
        ({"current": ""}, "current", "This field is required."),
        ({"password": "p" * 257, "confirm": "p" * 257}, "password", "256"),
    ],
)
def test_a_refused_password_change_says_why_and_keeps_everything(
    app, client, db, signed_in, data, field, message
):
    user = signed_in("viewer")
    before = reload(db, user).password_hash

    response = client.post(
        "/account/password",
        data={"current": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD, **data},
    )

    assert response.status_code == 422
    error = response.get_data(as_text=True).split(f'<p class="error" id="{field}-error">', 1)
    assert len(error) == 2 and message in error[1].split("</p>", 1)[0]
    assert reload(db, user).password_hash == before
    assert client.get("/transactions").status_code == 200, "still signed in"
    assert events(db, user) == []


@pytest.mark.parametrize("app_config", [{"WTF_CSRF_ENABLED": True}])
@pytest.mark.parametrize("path", ["/account/name", "/account/password"])
def test_account_changes_need_the_forms_csrf_token(client, db, make_user, path):
    user = make_user()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    assert (
        client.post(
            "/login", data={"email": user.email, "password": PASSWORD, "csrf_token": token}
        ).status_code
        == 302
    )

    data = {"name": "Mallory", "current": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    response = client.post(path, data=data)

    assert response.status_code == 400
    assert "This form has expired or did not come from this site" in response.get_data(as_text=True)
    assert reload(db, user).name == ""
    assert reload(db, user).check_password(PASSWORD)
