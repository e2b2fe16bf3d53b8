"""Staff sign-in and sign-out: passwords, deactivation, throttling, the `next` parameter."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import AuditEvent
from recovery.users.services import set_active
from tests.conftest import PASSWORD, login

DASHBOARD = "/transactions"


def signed_in_user_id(client: FlaskClient) -> str | None:
    with client.session_transaction() as session:
        return session.get("_user_id")


def can_see_dashboard(client: FlaskClient) -> bool:
    response = client.get(DASHBOARD)
    assert response.status_code in (200, 302)
    return response.status_code == 200


def post_login(client: FlaskClient, email: str, password: str, ip: str = "127.0.0.1", query: str = "") -> Any:
    return client.post(
        "/login" + query,
        data={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": ip},
    )


def audit_actions(db: Any, organization_id: int) -> list[str]:
    return list(
        db.session.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.organization_id == organization_id)
            .order_by(AuditEvent.id)
        )
    )


# --- passwords ---------------------------------------------------------------


def test_good_password_signs_in_and_lands_on_the_dashboard(client, db, make_user):
    user = make_user(role="viewer")

    response = login(client, user)

    assert response.status_code == 302
    assert response.headers["Location"] == DASHBOARD
    assert signed_in_user_id(client) == user.get_id()
    assert can_see_dashboard(client)
    db.session.refresh(user)
    assert user.last_login_at is not None
    assert audit_actions(db, user.organization_id) == ["user.signed_in"]


def test_email_is_matched_without_regard_to_case_or_spaces(client, make_user):
    user = make_user(email="casey@example.com")

    response = post_login(client, "  Casey@EXAMPLE.com ", PASSWORD)

    assert response.status_code == 302
    assert signed_in_user_id(client) == user.get_id()


def test_login_page_has_labelled_fields(client):
    page = client.get("/login").get_data(as_text=True)

    assert '<label for="email">Email</label>' in page
    assert '<label for="password">Password</label>' in page


@pytest.mark.parametrize("case", ["wrong password", "unknown email", "deactivated user"])
def test_refused_sign_in_answers_401_with_a_message_at_the_password(client, db, make_user, case):
    user = make_user(email="dana@example.com")
    email, password = "dana@example.com", PASSWORD
    if case == "wrong password":
        password = "not the password"
    elif case == "unknown email":
        email = "nobody@example.com"
    else:
        user.is_active = False
        db.session.commit()

    response = post_login(client, email, password)

    assert response.status_code == 401
    page = response.get_data(as_text=True)
    assert '<p class="error" id="password-error">The email or password is not right.</p>' in page
    assert 'aria-describedby="password-error"' in page
    assert f'value="{email}"' in page, "the email stays filled in"
    assert signed_in_user_id(client) is None
    assert not can_see_dashboard(client)
    assert audit_actions(db, user.organization_id) == []


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"email": "", "password": PASSWORD}, "email"),
        ({"email": "dana@example.com", "password": ""}, "password"),
        ({"email": "x" * 250 + "@example.com", "password": PASSWORD}, "email"),
    ],
)
def test_incomplete_form_answers_400_with_the_field_marked(client, make_user, data, field):
    make_user(email="dana@example.com")

    response = client.post("/login", data=data)

    assert response.status_code == 400
    assert f'id="{field}-error"' in response.get_data(as_text=True)
    assert signed_in_user_id(client) is None


def test_user_deactivated_after_sign_in_loses_the_session(client, db, make_user):
    user = make_user()
    assert login(client, user).status_code == 302
    assert can_see_dashboard(client)

    user.is_active = False
    db.session.commit()

    response = client.get(DASHBOARD)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_remember_me_cookie_stops_working_after_deactivation(client, db, make_user):
    user = make_user()
    client.post("/login", data={"email": user.email, "password": PASSWORD, "remember": "y"})
    assert client.get_cookie("remember_token") is not None
    client.delete_cookie("session")  # a new browser session, only the remember cookie left
    assert can_see_dashboard(client)

    user.is_active = False
    db.session.commit()
    client.delete_cookie("session")

    assert not can_see_dashboard(client)


def test_reactivation_does_not_revive_sessions_from_before(client, db, make_user):
    user = make_user()
    client.post("/login", data={"email": user.email, "password": PASSWORD, "remember": "y"})
    assert can_see_dashboard(client)

    owner = make_user(org=user.organization)
    actor = Actor.for_user(owner)
    set_active(db.session, owner, actor, user, False)
    set_active(db.session, owner, actor, user, True)
    db.session.commit()

    assert not can_see_dashboard(client)  # the session cookie
    client.delete_cookie("session")
    assert not can_see_dashboard(client)  # the remember cookie
    assert login(client, user).status_code == 302
    assert can_see_dashboard(client)


def test_a_new_password_ends_other_sessions(client, db, make_user):
    user = make_user()
    assert login(client, user).status_code == 302

    user.set_password("a brand new passphrase")
    db.session.commit()

    assert not can_see_dashboard(client)


def test_a_forged_session_id_is_refused(client, make_user):
    user = make_user()
    for forged in (str(user.id), f"{user.id}.7", "x.0", ""):
        with client.session_transaction() as session:
            session["_user_id"] = forged
            session["_fresh"] = True
        assert not can_see_dashboard(client), forged


def test_sign_out_is_a_post_and_ends_the_session(client, signed_in):
    signed_in("viewer")

    assert client.get("/logout").status_code == 405
    assert can_see_dashboard(client)

    response = client.post("/logout")

    assert response.status_code == 302
    assert response.headers["Location"] == "/login"
    assert signed_in_user_id(client) is None
    assert not can_see_dashboard(client)


def test_sign_out_is_audited(client, db, signed_in):
    user = signed_in("viewer")

    client.post("/logout")

    assert audit_actions(db, user.organization_id) == ["user.signed_in", "user.signed_out"]


def test_signed_in_user_visiting_login_goes_to_the_dashboard(client, signed_in):
    signed_in("viewer")

    response = client.get("/login")

    assert response.status_code == 302
    assert response.headers["Location"] == DASHBOARD


# --- throttling (Flask-Limiter on the real Redis) -----------------------------


def test_sixth_failure_for_one_account_is_refused_from_any_address(client, app, make_user, redis_url):
    user = make_user(email="erin@example.com")
    for n in range(1, 6):
        assert post_login(client, "erin@example.com", "wrong", ip=f"10.0.0.{n}").status_code == 401

    # Another address, a differently written email: still the same account.
    response = post_login(client, "ERIN@example.com ", "wrong", ip="10.0.0.6")
    assert response.status_code == 429
    assert "Too many failed sign-in attempts" in response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) > 0
    # While throttled, even the right password is refused.
    assert post_login(client, user.email, PASSWORD, ip="10.0.0.7").status_code == 429
    assert signed_in_user_id(client) is None
    # Other accounts are not affected.
    other = make_user()
    assert post_login(client, other.email, PASSWORD, ip="10.0.0.8").status_code == 302
    # The counters live in Redis, shared by every web worker.
    assert Redis.from_url(redis_url).keys("*recovery-limits*")


def test_sixth_failure_from_one_address_is_refused_for_any_account(client, make_user):
    users = [make_user() for _ in range(7)]
    for user in users[:5]:
        assert post_login(client, user.email, "wrong", ip="10.1.1.1").status_code == 401

    assert post_login(client, users[5].email, "wrong", ip="10.1.1.1").status_code == 429
    assert post_login(client, "nobody@example.com", "wrong", ip="10.1.1.1").status_code == 429
    # Another address may still try.
    assert post_login(client, users[6].email, "wrong", ip="10.1.1.2").status_code == 401


def test_successful_sign_ins_do_not_count_as_failures(app, make_user):
    user = make_user()

    def attempt(password: str) -> int:
        return post_login(app.test_client(), user.email, password, ip="10.2.2.2").status_code

    for _ in range(4):
        assert attempt("wrong") == 401
    for _ in range(3):
        assert attempt(PASSWORD) == 302
    assert attempt("wrong") == 401  # the 5th failure
    assert attempt("wrong") == 429  # the 6th


def test_incomplete_forms_do_not_count_as_failures(client, make_user):
    user = make_user()
    for _ in range(6):
        assert client.post("/login", data={"email": user.email, "password": ""}).status_code == 400

    assert login(client, user).status_code == 302


# --- where sign-in leads: `next` -----------------------------------------------

EVIL_NEXT = [
    "//evil.example",
    "///evil.example",
    "\\\\evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "https://evil.example",
    "http:evil.example",
    "HTTPS://evil.example/transactions",
    "javascript:alert(1)",
    " //evil.example",
    "/\t/evil.example",
    "/\r\n/evil.example",
    "%2F%2Fevil.example",
    "evil.example",
    "transactions",
]

# Percent-encoded in the query string itself: decoded once by the server.
EVIL_RAW_QUERIES = [
    "next=%2F%2Fevil.example",
    "next=%5C%5Cevil.example",
    "next=%2F%5Cevil.example",
    "next=https%3A%2F%2Fevil.example",
    "next=%2F%09%2Fevil.example",
    "next=javascript%3Aalert(1)",
    "next=%252F%252Fevil.example",
]


@pytest.mark.parametrize("target", EVIL_NEXT)
@pytest.mark.parametrize("carrier", ["query", "form"])
def test_next_outside_the_app_lands_on_the_dashboard(client, make_user, target, carrier):
    user = make_user()
    if carrier == "query":
        response = post_login(client, user.email, PASSWORD, query="?" + urlencode({"next": target}))
    else:
        response = client.post("/login", data={"email": user.email, "password": PASSWORD, "next": target})

    assert response.status_code == 302
    assert response.headers["Location"] == DASHBOARD


@pytest.mark.parametrize("raw_query", EVIL_RAW_QUERIES)
def test_encoded_next_outside_the_app_lands_on_the_dashboard(client, make_user, raw_query):
    user = make_user()

    response = post_login(client, user.email, PASSWORD, query="?" + raw_query)

    assert response.headers["Location"] == DASHBOARD


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example", "javascript:alert(1)"])
def test_signed_in_user_with_bad_next_lands_on_the_dashboard(client, signed_in, target):
    signed_in("viewer")

    response = client.get("/login?" + urlencode({"next": target}))

    assert response.headers["Location"] == DASHBOARD


def test_next_inside_the_app_is_followed_through_the_login_page(client, make_user):
    user = make_user()

    bounced = client.get("/transactions?status=failed")
    assert bounced.status_code == 302
    login_url = bounced.headers["Location"]
    assert login_url.startswith("/login?next=")
    page = client.get(login_url).get_data(as_text=True)
    assert 'name="next" type="hidden" value="/transactions?status=failed"' in page

    response = client.post(login_url, data={"email": user.email, "password": PASSWORD})
    assert response.headers["Location"] == "/transactions?status=failed"

    client.post("/logout")
    response = client.post(
        "/login", data={"email": user.email, "password": PASSWORD, "next": "/transactions?status=failed"}
    )
    assert response.headers["Location"] == "/transactions?status=failed"


def test_failed_sign_in_keeps_next_for_the_next_try(client, make_user):
    user = make_user()

    response = client.post(
        "/login?next=%2Fimports", data={"email": user.email, "password": "wrong", "next": "/imports"}
    )

    assert response.status_code == 401
    assert 'name="next" type="hidden" value="/imports"' in response.get_data(as_text=True)
